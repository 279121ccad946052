"""The one job lifecycle (``ctx.job``) against a real nats-server: what the job board says for a job
that succeeds, is refused by its core, fails once and is retried, fails for good, or was cancelled
while it waited in the queue; and that the board says succeeded before the job's outcome event goes
out."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from contracts.events import (
    CorpusIngested,
    DatasetRef,
    EventEnvelope,
    EventPayload,
    IngestRequested,
    JobFailed,
    JobProgress,
)
from shared.bus import Bus, HandlerContext, JobStatus
from shared.errors import Refusal

pytestmark = pytest.mark.integration
KIND = "lifecycle-test"


class UnknownSource(Refusal):
    """What a core raises for a request that can never succeed."""


def _request(job_id: str) -> IngestRequested:
    return IngestRequested(job_id=job_id, dataset_name="d", sources=["/nowhere"])


async def _final(bus: Bus, job_id: str, timeout: float = 20.0) -> JobStatus:
    async def terminal() -> JobStatus:
        async for status in bus.jobs.watch(job_id):
            if status.state in ("succeeded", "failed", "cancelled"):
                return status
        raise AssertionError("the watch ended without a final state")

    return await asyncio.wait_for(terminal(), timeout)


async def test_lifecycle_outcomes_on_the_job_board(nats_url: str) -> None:
    bus = Bus(nats_url, "lifecycle-test")
    attempts: dict[str, int] = {}
    seen_running: dict[str, JobStatus] = {}
    failures: list[str] = []

    @bus.handle(IngestRequested, max_deliver=3, backoff=(0.1,))
    async def handler(ctx: HandlerContext[IngestRequested]) -> None:
        job_id = ctx.payload.job_id
        attempts[job_id] = attempts.get(job_id, 0) + 1
        async with ctx.job(job_id, KIND, stage="work", message="working") as job:
            if job.cancelled:
                return
            status = await bus.jobs.get(job_id)
            assert status is not None
            seen_running[job_id] = status
            if job_id == "refused":
                raise UnknownSource("no such source: /nowhere")
            if job_id == "flaky" and attempts[job_id] == 1:
                raise RuntimeError("the disk hiccupped")
            if job_id == "bug":
                raise ValueError("an honest bug")  # retried, never taken for a refusal
            report = job.thread_progress(min_interval=0.0)
            await asyncio.to_thread(report, "half", 0.5)
            job.succeed("all done", result={"documents": 3})

    await bus.start()
    try:

        async def on_failed(msg: object) -> None:
            envelope = EventEnvelope.from_bytes(msg.data)  # type: ignore[attr-defined]
            failures.append(envelope.payload_as(JobFailed).error)

        await bus.broker.connection.subscribe(JobFailed.subject(), cb=on_failed)
        await bus.jobs.update("cancelled", KIND, state="cancelled", message="user said stop")
        for job_id in ("ok", "refused", "flaky", "bug", "cancelled"):
            await bus.publish(_request(job_id), event_id=f"req-{job_id}")

        ok = await _final(bus, "ok")
        assert (ok.state, ok.stage, ok.fraction, ok.message) == ("succeeded", "done", 1.0, "all done")
        assert ok.result == {"documents": 3}
        assert seen_running["ok"].state == "running" and seen_running["ok"].stage == "work"
        assert seen_running["ok"].message == "working"

        refused = await _final(bus, "refused")
        assert refused.state == "failed"
        assert f"{KIND} job refused: no such source: /nowhere" in refused.message
        assert attempts["refused"] == 1  # a refusal is never retried

        flaky = await _final(bus, "flaky")
        assert flaky.state == "succeeded" and attempts["flaky"] == 2

        bug = await _final(bus, "bug")
        assert bug.state == "failed" and "ValueError: an honest bug" in bug.message
        assert attempts["bug"] == 3  # retried up to max_deliver, then dead-lettered

        await asyncio.sleep(0.5)
        cancelled = await bus.jobs.get("cancelled")
        assert cancelled is not None
        assert (cancelled.state, cancelled.message) == ("cancelled", "user said stop")
        assert "cancelled" not in seen_running  # the handler returned before any work
        assert len(failures) == 2  # job.failed says why, for the refusal and for the bug
        assert any("rejected: " in f and "no such source" in f for f in failures)
        assert any("an honest bug" in f for f in failures)
    finally:
        await bus.stop()


async def test_a_failed_attempt_is_on_the_board_while_it_waits_for_its_retry(nats_url: str) -> None:
    bus = Bus(nats_url, "lifecycle-retry-test")
    release = asyncio.Event()
    attempts = 0

    @bus.handle(IngestRequested, max_deliver=3, backoff=(1.0,))
    async def handler(ctx: HandlerContext[IngestRequested]) -> None:
        nonlocal attempts
        attempts += 1
        async with ctx.job(ctx.payload.job_id, KIND) as job:
            if attempts == 1:
                raise RuntimeError("worker lost its scratch disk")
            await release.wait()
            job.succeed("recovered")

    await bus.start()
    try:
        await bus.publish(_request("retry"), event_id="req-retry")
        async with asyncio.timeout(20):
            while True:
                status = await bus.jobs.get("retry")
                if status is not None and "attempt 1 failed" in status.message:
                    break
                await asyncio.sleep(0.05)
        assert status.state == "running"
        assert "RuntimeError: worker lost its scratch disk" in status.message
        release.set()
        final = await _final(bus, "retry")
        assert (final.state, final.message) == ("succeeded", "recovered")
    finally:
        await bus.stop()


async def test_a_job_started_by_a_fact_ends_failed_when_refused(nats_url: str) -> None:
    """The dead letter only knows job requests; the lifecycle itself marks such a job failed."""
    bus = Bus(nats_url, "lifecycle-fact-test")

    @bus.handle(JobProgress, max_deliver=2, backoff=(0.1,))
    async def handler(ctx: HandlerContext[JobProgress]) -> None:
        async with ctx.job(f"job-for-{ctx.payload.stage}", KIND):
            if ctx.payload.stage == "refused":
                raise UnknownSource("the model folder has no config.json")
            raise RuntimeError("always broken")

    await bus.start()
    try:
        for stage in ("refused", "broken"):
            await bus.publish(JobProgress(job_id="a-fact", job_kind="x", stage=stage, fraction=0.0))
        refused = await _final(bus, "job-for-refused")
        assert refused.state == "failed" and "no config.json" in refused.message
        broken = await _final(bus, "job-for-broken")
        assert broken.state == "failed" and "RuntimeError: always broken" in broken.message
    finally:
        await bus.stop()


def _ingested(job_id: str) -> CorpusIngested:
    dataset = DatasetRef(dataset_id=f"ds-{job_id}", manifest_uri="file:///m.json", digest="0" * 64)
    return CorpusIngested(job_id=job_id, dataset=dataset, documents=3, stages=[])


async def test_the_board_says_succeeded_when_the_outcome_event_arrives(
    nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whoever hears the outcome event reads the final state at once, with no polling; a publish
    that fails fails the delivery, and the retry publishes the event once."""
    bus = Bus(nats_url, "lifecycle-outcome-test")
    attempts: dict[str, int] = {}

    @bus.handle(IngestRequested, max_deliver=3, backoff=(0.1,))
    async def handler(ctx: HandlerContext[IngestRequested]) -> None:
        job_id = ctx.payload.job_id
        attempts[job_id] = attempts.get(job_id, 0) + 1
        async with ctx.job(job_id, KIND, stage="work") as job:
            job.succeed(
                "3 documents", result={"documents": 3}, event=_ingested(job_id), event_id=f"done:{job_id}"
            )

    publish = HandlerContext.publish
    failed_once: set[str] = set()

    async def flaky_publish(
        ctx: HandlerContext[Any], payload: EventPayload, *, event_id: str | None = None
    ) -> EventEnvelope:
        if isinstance(payload, CorpusIngested) and payload.job_id == "lost-event" and not failed_once:
            failed_once.add(payload.job_id)
            raise ConnectionError("the bus went away")
        return await publish(ctx, payload, event_id=event_id)

    monkeypatch.setattr(HandlerContext, "publish", flaky_publish)
    heard: asyncio.Queue[tuple[EventEnvelope, JobStatus | None]] = asyncio.Queue()

    async def on_ingested(msg: object) -> None:
        envelope = EventEnvelope.from_bytes(msg.data)  # type: ignore[attr-defined]
        await heard.put((envelope, await bus.jobs.get(envelope.payload_as(CorpusIngested).job_id)))

    await bus.start()
    try:
        await bus.broker.connection.subscribe(CorpusIngested.subject(), cb=on_ingested)
        request = await bus.publish(_request("outcome"), event_id="req-outcome")
        envelope, status = await asyncio.wait_for(heard.get(), 20)
        assert status is not None
        assert (status.state, status.stage, status.message) == ("succeeded", "done", "3 documents")
        assert status.result == {"documents": 3}
        assert envelope.correlation_id == request.correlation_id and envelope.causation_id == request.id

        await bus.publish(_request("lost-event"), event_id="req-lost-event")
        envelope, status = await asyncio.wait_for(heard.get(), 20)
        assert envelope.payload_as(CorpusIngested).job_id == "lost-event"
        assert status is not None and status.state == "succeeded"
        assert attempts["lost-event"] == 2  # the failed publish failed the delivery: redelivered
        await asyncio.sleep(0.5)
        assert heard.empty()  # one copy of each outcome event
    finally:
        await bus.stop()
