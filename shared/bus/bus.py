"""The bus: FastStream's NatsBroker with the delivery rules of DESIGN.md done once.

- Publishers set ``Nats-Msg-Id`` to the event id sealed with their identity's key
  (``shared.bus.identity.seal_message_id``), so a re-publish inside the duplicate window is stored
  once and no other service can claim the id first.
- Subscribers are durable pull consumers with manual acks: success acks; a failure is nak'ed with
  back-off until ``max_deliver``; then (or at once for a malformed message, or a ``JobRejected``)
  the message goes to the dead-letter stream with its error and a ``job.failed`` event says why.
- Handlers are idempotent: a processed marker (per service and ``HandlerContext.event_key``: the
  event type and the sealed message id, so another publisher's event with the same id is another
  event) is checked before and written after the handler; handlers derive output ids from their input so that a re-run after a
  crash between effect and marker produces nothing new.
- Long handlers keep their message alive with in-progress acks.
- Each process connects as its own NATS identity (``shared.bus.identity``); after a reconnect the
  streams, buckets and this process's consumers are made again where the server lost them (a
  restarted server keeps no memory-backed bucket, and a lost store keeps nothing).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import hashlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from faststream import AckPolicy
from faststream.nats import ConsumerConfig, JStream, NatsBroker, NatsMessage, PullSub
from nats.aio.msg import Msg
from nats.js.api import AckPolicy as JsAckPolicy
from nats.js.api import DeliverPolicy
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue
from prometheus_client import Counter, Histogram

from contracts.events import EventEnvelope, EventPayload, InvalidEvent, JobFailed, JobProgress
from contracts.events.subjects import JOBS_BUCKET, PROCESSED_BUCKET, dlq_subject, stream_for
from shared.bus.identity import NatsIdentity, check_connection, describe_refusal, seal_message_id
from shared.bus.jobs import JobBoard
from shared.bus.lifecycle import JobRun
from shared.bus.permissions import durable_name
from shared.bus.streams import ensure_buckets, ensure_consumer, ensure_streams
from shared.errors import Refusal
from shared.logging import correlation_id

log = logging.getLogger(__name__)
P = TypeVar("P", bound=EventPayload)

EVENTS_HANDLED = Counter(
    "puyu_events_handled_total", "Events handled, by outcome", ["service", "type", "outcome"]
)
HANDLER_SECONDS = Histogram("puyu_handler_seconds", "Handler wall time", ["service", "type"])
EVENTS_PUBLISHED = Counter("puyu_events_published_total", "Events published", ["service", "type"])
EVENTS_DUPLICATE = Counter(
    "puyu_events_duplicate_total",
    "Publishes JetStream had already stored (re-publishes)",
    ["service", "type"],
)


class JobRejected(Refusal):
    """The request can never succeed (invalid spec, unknown model...): no retry, straight to dead letter.

    Any ``Refusal`` a handler lets through is treated the same way; this subclass is what the job
    lifecycle raises for a core's refusal, with the job named in the message."""


@dataclass
class HandlerContext(Generic[P]):
    bus: Bus
    envelope: EventEnvelope
    payload: P
    attempt: int
    max_deliver: int = 1  # the attempt that dead-letters: the lifecycle marks its job failed
    # What a consumer keys its idempotency on (the bus's marker, a database's processed-event row):
    # the type and the sealed Nats-Msg-Id. The envelope id alone is the publisher's word: another
    # service could send the same id first, on an event of its own, and have the real one skipped.
    event_key: str = ""
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.get_running_loop)
    _reporters: list[ThreadProgress] = field(default_factory=list)  # flushed by the handler wrapper

    async def publish(self, payload: EventPayload, *, event_id: str | None = None) -> EventEnvelope:
        """Publish an event caused by the one being handled (same correlation id)."""
        return await self.bus.publish(payload, causation=self.envelope, event_id=event_id)

    async def progress(
        self, job_id: str, kind: str, stage: str, fraction: float, message: str = "", **metrics: float
    ) -> None:
        fraction = min(max(fraction, 0.0), 1.0)
        await self.bus.jobs.update(
            job_id,
            kind,
            state="running",
            stage=stage,
            fraction=fraction,
            message=message,
            correlation_id=self.envelope.correlation_id,
        )
        await self.publish(
            JobProgress(
                job_id=job_id, job_kind=kind, stage=stage, fraction=fraction, message=message, metrics=metrics
            )
        )

    def job(self, job_id: str, kind: str, *, stage: str = "starting", message: str = "") -> JobRun:
        """The job's lifecycle as an ``async with`` block (see ``shared.bus.lifecycle``)."""
        return JobRun(self, job_id, kind, stage, message)

    def progress_from_thread(self, job_id: str, kind: str, min_interval: float = 1.0) -> ThreadProgress:
        """A progress callback that compute running in a worker thread may call (rate-limited).

        The handler wrapper flushes it after the handler returns; call ``await reporter.flush()``
        yourself before writing the job's final state, so a late "running" cannot overwrite it.
        """
        reporter = ThreadProgress(self, job_id, kind, min_interval)
        self._reporters.append(reporter)
        return reporter


class ThreadProgress:
    """Rate-limited progress reports from a worker thread, published on the handler's event loop."""

    def __init__(self, ctx: HandlerContext[Any], job_id: str, kind: str, min_interval: float) -> None:
        self.ctx, self.job_id, self.kind, self.min_interval = ctx, job_id, kind, min_interval
        self.loop = ctx.loop
        self._last = 0.0
        self._lock = threading.Lock()
        self._pending: list[concurrent.futures.Future[None]] = []

    def __call__(self, stage: str, fraction: float, message: str = "", **metrics: float) -> None:
        with self._lock:
            now = time.monotonic()
            if now - self._last < self.min_interval and fraction < 1.0:
                return
            self._last = now
            coro = self.ctx.progress(self.job_id, self.kind, stage, min(fraction, 0.99), message, **metrics)
            self._pending.append(asyncio.run_coroutine_threadsafe(coro, self.loop))

    async def flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        for fut in pending:
            with contextlib.suppress(Exception):  # progress is best effort: a lost update fails nothing
                await asyncio.wrap_future(fut)


Handler = Callable[[HandlerContext[Any]], Awaitable[None]]


class Bus:
    def __init__(self, nats_url: str, service: str, identity: NatsIdentity | None = None) -> None:
        """``identity``: who this process is on NATS (default: from ``PUYU_NATS_*`` settings)."""
        self.service = service
        self.nats_url = nats_url
        self.identity = identity if identity is not None else NatsIdentity.from_env()
        self._inbox = self.identity.inbox_prefix()  # replies come only where this identity may listen
        self._msg_id_key = self.identity.message_id_key()
        self.broker = NatsBroker(
            nats_url,
            max_reconnect_attempts=-1,
            reconnect_time_wait=1,
            security=self.identity.broker_security(),
            inbox_prefix=self._inbox,
            reconnected_cb=self._on_reconnected,
            logger=logging.getLogger("faststream"),
            log_level=logging.DEBUG,  # one line per message is too much at INFO
        )
        self._kv: dict[str, KeyValue] = {}
        self._jobs: JobBoard | None = None
        self._consumers: list[tuple[str, ConsumerConfig]] = []  # (stream, config) of each handler
        self._restoring: asyncio.Task[None] | None = None
        self.started = False

    # ------------------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        try:
            await self.broker.connect()
        except Exception as exc:
            if (refused := describe_refusal(exc, self.identity, self.nats_url)) is not None:
                raise refused from exc
            raise
        check_connection(self.broker.connection, self.identity, self.service)
        js = self.broker.connection.jetstream()
        await ensure_streams(js, update=self.identity.anonymous)
        await ensure_buckets(js)
        self._kv[JOBS_BUCKET] = await js.key_value(JOBS_BUCKET)
        self._kv[PROCESSED_BUCKET] = await js.key_value(PROCESSED_BUCKET)
        self._jobs = JobBoard(self._kv[JOBS_BUCKET])
        await self.broker.start()
        self.started = True

    async def stop(self) -> None:
        self.started = False
        if self._restoring is not None:
            self._restoring.cancel()
        await self.broker.stop()

    async def _on_reconnected(self) -> None:
        # Not awaited here: nats-py calls this from its reconnect loop, and the JetStream API needs it.
        if self.started:
            if self._restoring is not None:
                self._restoring.cancel()
            self._restoring = asyncio.create_task(self._restore(), name=f"{self.service}-bus-restore")

    async def _restore(self, max_delay: float = 5.0) -> None:
        """Make again what the server may have lost; retried until it works (JetStream may need a
        moment after the server is back) or the bus stops."""
        delay = 0.25
        while self.started:
            try:
                js = self.broker.connection.jetstream()
                await ensure_streams(js, update=self.identity.anonymous)
                await ensure_buckets(js)
                for stream, config in self._consumers:
                    await ensure_consumer(js, stream, config)
            except Exception as exc:
                log.warning(
                    "%s: restoring streams after a reconnect failed (%s), retrying", self.service, exc
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, max_delay)
            else:
                log.info(
                    "%s: streams, buckets and %d consumer(s) checked after a reconnect",
                    self.service,
                    len(self._consumers),
                )
                return

    @property
    def consumers(self) -> list[tuple[str, ConsumerConfig]]:
        """(stream, config) of every handler's durable consumer, as registered."""
        return list(self._consumers)

    @property
    def jobs(self) -> JobBoard:
        if self._jobs is None:
            raise RuntimeError("bus not started")
        return self._jobs

    async def key_value(self, bucket: str) -> KeyValue:
        if bucket not in self._kv:
            self._kv[bucket] = await self.broker.connection.jetstream().key_value(bucket)
        return self._kv[bucket]

    # ------------------------------------------------------------------------------ publish
    async def publish(
        self,
        payload: EventPayload,
        *,
        causation: EventEnvelope | None = None,
        correlation: str | None = None,
        event_id: str | None = None,
    ) -> EventEnvelope:
        envelope = EventEnvelope.wrap(
            payload,
            source=self.service,
            correlation_id=correlation or (causation.correlation_id if causation else correlation_id.get()),
            causation=causation,
            event_id=event_id,
        )
        await self.publish_envelope(envelope, type(payload))
        return envelope

    def message_id(self, subject: str, event_id: str) -> str:
        """The ``Nats-Msg-Id`` this process sends for ``event_id`` on ``subject`` (sealed with its key)."""
        return seal_message_id(self._msg_id_key, subject, event_id)

    async def publish_envelope(self, envelope: EventEnvelope, cls: type[EventPayload]) -> None:
        subject = cls.subject()
        ack = await self.broker.publish(
            envelope.to_bytes(),
            subject,
            headers={"Nats-Msg-Id": self.message_id(subject, envelope.id), "Puyu-Type": envelope.type},
            stream=stream_for(cls),
            timeout=10,
        )
        EVENTS_PUBLISHED.labels(self.service, envelope.type).inc()
        if ack is not None and ack.duplicate:
            # Sealed: only this identity (or a replica) could have stored it, i.e. the same fact.
            EVENTS_DUPLICATE.labels(self.service, envelope.type).inc()
            log.debug("%s %s was already stored (seq %s)", envelope.type, envelope.id, ack.seq)

    # ------------------------------------------------------------------------------ subscribe
    def handle(
        self,
        cls: type[P],
        *,
        durable: str | None = None,
        max_deliver: int = 5,
        ack_wait: float = 30.0,
        backoff: tuple[float, ...] = (1.0, 4.0, 15.0, 30.0),
        idempotent: bool = True,
        inactive_threshold: float | None = None,
    ) -> Callable[
        [Callable[[HandlerContext[P]], Awaitable[None]]], Callable[[HandlerContext[P]], Awaitable[None]]
    ]:
        """Register ``handler(ctx)`` for events of type ``cls`` (one durable consumer per service).

        ``inactive_threshold`` (seconds): the server deletes the consumer after that long without a
        pull (for consumers named per process instance, which would otherwise pile up)."""
        durable = durable or durable_name(self.service, cls)
        config = ConsumerConfig(
            name=durable,
            durable_name=durable,
            ack_policy=JsAckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=ack_wait,
            # one more than ours: the last delivery is the one that dead-letters
            max_deliver=max_deliver + 1,
            filter_subject=cls.subject(),
            inactive_threshold=inactive_threshold,
        )
        self._consumers.append((stream_for(cls), dataclasses.replace(config)))

        def decorator(
            handler: Callable[[HandlerContext[P]], Awaitable[None]],
        ) -> Callable[[HandlerContext[P]], Awaitable[None]]:
            consumer = _Consumer(self, cls, handler, max_deliver, ack_wait, backoff, idempotent)
            self.broker.subscriber(
                cls.subject(),
                # ensure_streams owns the stream configs; FastStream must not re-declare them (it
                # would reset a work-queue stream's retention, which the server refuses).
                stream=JStream(stream_for(cls), declare=False),
                durable=durable,
                pull_sub=PullSub(batch_size=1, timeout=5.0),
                inbox_prefix=f"{self._inbox}.".encode(),  # FastStream's own default is _INBOX.
                ack_policy=AckPolicy.MANUAL,
                config=config,
                title=f"{self.service}:{cls.event_type}",
            )(_as_faststream_handler(consumer))
            return handler

        return decorator

    # ------------------------------------------------------------------------------ idempotency
    def _processed_key(self, event_key: str) -> str:
        return hashlib.sha1(f"{self.service}|{event_key}".encode()).hexdigest()

    async def already_processed(self, event_key: str) -> bool:
        """``event_key``: ``HandlerContext.event_key`` (see ``event_key``), never a bare envelope id."""
        try:
            await self._kv[PROCESSED_BUCKET].get(self._processed_key(event_key))
        except KeyNotFoundError:
            return False
        return True

    async def mark_processed(self, event_key: str) -> None:
        await self._kv[PROCESSED_BUCKET].put(self._processed_key(event_key), b"1")

    async def dead_letter(
        self,
        raw: Msg,
        error: str,
        attempts: int,
        envelope: EventEnvelope | None,
        payload: EventPayload | None,
    ) -> None:
        seq = raw.metadata.sequence.stream if raw.metadata and raw.metadata.sequence else 0
        subject = dlq_subject(raw.subject)
        await self.broker.publish(
            raw.data,
            subject,
            headers={
                "Nats-Msg-Id": self.message_id(subject, f"dlq:{self.service}:{raw.subject}:{seq}"),
                "Puyu-Error": error[:2000].replace("\n", " "),
                "Puyu-Service": self.service,
                "Puyu-Attempts": str(attempts),
            },
            stream="PUYU_DLQ",
            timeout=10,
        )
        # Only a job request's own failure fails the job; a fact that failed here (e.g. a dataset this
        # service could not index) must not mark the upstream job that produced it as failed.
        job_id = getattr(payload, "job_id", None) if payload is not None and payload.kind == "job" else None
        failed = JobFailed(
            job_id=job_id,
            service=self.service,
            source_subject=raw.subject,
            event_id=envelope.id if envelope else None,
            error=error,
            attempts=attempts,
        )
        await self.publish(
            failed,
            causation=envelope,
            event_id=f"failed:{self.service}:{envelope.id if envelope else seq}",
        )
        if job_id:
            await self.jobs.update(
                job_id, str(getattr(payload, "event_type", "job")), state="failed", message=error[:500]
            )
        log.error("dead-lettered %s after %d attempt(s): %s", raw.subject, attempts, error)


def event_key(cls: type[EventPayload], raw: Msg, envelope: EventEnvelope) -> str:
    """What a consumer of ``cls`` keys idempotency on: the type and the message id as sealed by its
    publisher. A forger can copy an envelope id but not its seal, so its event never shares a key
    with the real one; a message without an id (no puyu publisher sends one) gets a key of its own."""
    msg_id = (raw.headers or {}).get("Nats-Msg-Id")
    return f"{cls.event_type}/{msg_id}" if msg_id else f"{cls.event_type}/no-msg-id/{envelope.id}"


def _as_faststream_handler(consumer: _Consumer[Any]) -> Callable[[NatsMessage], Awaitable[None]]:
    async def consume(msg: NatsMessage) -> None:
        await consumer(msg)

    # FastStream resolves handler annotations at runtime: give it the real class, not a string.
    consume.__annotations__ = {"msg": NatsMessage, "return": None}
    consume.__name__ = consumer.__name__
    return consume


class _Consumer(Generic[P]):
    """The FastStream handler behind ``Bus.handle``: parsing, idempotency, acks, retries, dead letters."""

    def __init__(
        self,
        bus: Bus,
        cls: type[P],
        handler: Callable[[HandlerContext[P]], Awaitable[None]],
        max_deliver: int,
        ack_wait: float,
        backoff: tuple[float, ...],
        idempotent: bool,
    ) -> None:
        self.bus, self.cls, self.handler = bus, cls, handler
        self.max_deliver, self.ack_wait, self.backoff, self.idempotent = (
            max_deliver,
            ack_wait,
            backoff,
            idempotent,
        )
        self.__name__ = f"handle_{cls.event_type.replace('.', '_')}"

    async def __call__(self, msg: NatsMessage) -> None:
        raw: Msg = msg.raw_message
        attempt = raw.metadata.num_delivered if raw.metadata else 1
        envelope: EventEnvelope | None = None
        try:
            envelope = EventEnvelope.from_bytes(raw.data)
            payload: P = envelope.payload_as(self.cls)
        except InvalidEvent as exc:
            EVENTS_HANDLED.labels(self.bus.service, self.cls.event_type, "invalid").inc()
            await self.bus.dead_letter(raw, str(exc), attempt, envelope, None)
            await raw.term()
            return
        token = correlation_id.set(envelope.correlation_id)
        try:
            await self._handle(raw, envelope, payload, attempt)
        finally:
            correlation_id.reset(token)

    async def _handle(self, raw: Msg, envelope: EventEnvelope, payload: P, attempt: int) -> None:
        service, etype = self.bus.service, envelope.type
        key = event_key(self.cls, raw, envelope)
        if self.idempotent and await self.bus.already_processed(key):
            EVENTS_HANDLED.labels(service, etype, "duplicate").inc()
            log.info("skip %s %s: already processed", etype, envelope.id)
            await raw.ack()
            return
        keepalive = asyncio.create_task(self._keep_alive(raw))
        started = time.perf_counter()
        ctx = HandlerContext(self.bus, envelope, payload, attempt, self.max_deliver, event_key=key)
        try:
            try:
                await self.handler(ctx)
            finally:
                for reporter in ctx._reporters:
                    await reporter.flush()
        except Refusal as exc:
            EVENTS_HANDLED.labels(service, etype, "rejected").inc()
            await self.bus.dead_letter(raw, f"rejected: {exc}", attempt, envelope, payload)
            await raw.term()
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            if attempt >= self.max_deliver:
                EVENTS_HANDLED.labels(service, etype, "dead_letter").inc()
                await self.bus.dead_letter(raw, error, attempt, envelope, payload)
                await raw.term()
            else:
                EVENTS_HANDLED.labels(service, etype, "retry").inc()
                delay = self.backoff[min(attempt - 1, len(self.backoff) - 1)]
                log.warning(
                    "%s %s failed (attempt %d/%d), retry in %.0fs: %s",
                    etype,
                    envelope.id,
                    attempt,
                    self.max_deliver,
                    delay,
                    error,
                    exc_info=exc,
                )
                await raw.nak(delay=delay)
        else:
            EVENTS_HANDLED.labels(service, etype, "ok").inc()
            if self.idempotent:
                await self.bus.mark_processed(key)
            await raw.ack()
        finally:
            keepalive.cancel()
            HANDLER_SECONDS.labels(service, etype).observe(time.perf_counter() - started)

    async def _keep_alive(self, raw: Msg) -> None:
        while True:
            await asyncio.sleep(max(self.ack_wait / 3, 0.5))
            try:
                await raw.in_progress()
            except Exception:  # connection blip: the next beat retries
                log.debug("in_progress failed", exc_info=True)
