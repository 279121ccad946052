"""JetStream streams and key-value buckets, created (or updated) at start-up by every service."""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
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


async def ensure_streams(js: JetStreamContext) -> None:
    for config in STREAMS:
        assert config.name is not None
        try:
            await js.stream_info(config.name)
        except NotFoundError:
            try:
                await js.add_stream(config)
            except BadRequestError as exc:  # another replica created it first
                if "already in use" not in str(exc):
                    raise
        else:
            await js.update_stream(config)


async def ensure_buckets(js: JetStreamContext) -> None:
    await js.create_key_value(bucket=JOBS_BUCKET, history=5, storage=StorageType.FILE)
    await js.create_key_value(bucket=PROCESSED_BUCKET, history=1, ttl=7 * DAY, storage=StorageType.FILE)
    await js.create_key_value(bucket=WORKERS_BUCKET, history=1, ttl=60, storage=StorageType.MEMORY)
