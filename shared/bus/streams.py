"""JetStream streams, key-value buckets and consumers: created where missing by every service (at
start-up and again after a reconnect, as a restarted server may have lost them), updated by whoever
may (the admin identity; any process on a NATS without users)."""

from __future__ import annotations

import logging
from typing import Any

import nats
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError

from contracts.events.subjects import (
    DLQ_PREFIX,
    DLQ_STREAM,
    EVENTS_PREFIX,
    EVENTS_STREAM,
    JOBS_BUCKET,
    JOBS_PREFIX,
    JOBS_STREAM,
    PROCESSED_BUCKET,
    WORKERS_BUCKET,
)
from shared.bus.identity import NatsIdentity

log = logging.getLogger(__name__)
DAY = 24 * 3600.0

STREAMS = (
    StreamConfig(
        name=EVENTS_STREAM,
        subjects=[f"{EVENTS_PREFIX}.>"],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        max_age=7 * DAY,
        duplicate_window=DAY,
    ),
    StreamConfig(
        name=JOBS_STREAM,
        subjects=[f"{JOBS_PREFIX}.>"],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        max_age=7 * DAY,
        duplicate_window=DAY,
    ),
    StreamConfig(
        name=DLQ_STREAM,
        subjects=[f"{DLQ_PREFIX}.>"],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=30 * DAY,
        duplicate_window=DAY,
    ),
)


# The fields these configs set; the server fills in the rest.
_COMPARED = ("subjects", "retention", "storage", "discard", "max_age", "duplicate_window")


def _differs(current: StreamConfig, wanted: StreamConfig) -> list[str]:
    return [
        field
        for field in _COMPARED
        if getattr(wanted, field) is not None and getattr(current, field) != getattr(wanted, field)
    ]


async def ensure_streams(js: JetStreamContext, *, update: bool = True) -> None:
    """Create the streams that are missing; ``update``: bring the others to this release's config
    (a service with an identity may not: the admin does, and the rest is logged)."""
    for config in STREAMS:
        assert config.name is not None
        try:
            info = await js.stream_info(config.name)
        except NotFoundError:
            try:
                await js.add_stream(config)
            except BadRequestError as exc:  # another replica created it first
                if "already in use" not in str(exc):
                    raise
            continue
        changed = _differs(info.config, config)
        if changed and update:
            await js.update_stream(config)
        elif changed:
            log.warning(
                "stream %s differs from this release in %s: the admin identity updates it",
                config.name,
                ", ".join(changed),
            )


async def ensure_buckets(js: JetStreamContext) -> None:
    await js.create_key_value(bucket=JOBS_BUCKET, history=5, storage=StorageType.FILE)
    await js.create_key_value(bucket=PROCESSED_BUCKET, history=1, ttl=7 * DAY, storage=StorageType.FILE)
    await js.create_key_value(bucket=WORKERS_BUCKET, history=1, ttl=60, storage=StorageType.MEMORY)


async def ensure_consumer(js: JetStreamContext, stream: str, config: ConsumerConfig) -> None:
    """Create a durable consumer that is missing (after a restart that lost the store)."""
    assert config.durable_name is not None
    try:
        await js.consumer_info(stream, config.durable_name)
    except NotFoundError:
        await js.add_consumer(stream, config)


async def provision(nats_url: str, identity: NatsIdentity, **connect: Any) -> None:
    """Create and update every stream and bucket as ``identity`` (the admin: what a launcher runs
    once at start, so that services with their own identities never need to update a stream)."""
    nc = await nats.connect(nats_url, **identity.connect_options(), **connect)
    try:
        js = nc.jetstream()
        await ensure_streams(js, update=True)
        await ensure_buckets(js)
    finally:
        await nc.close()
