"""The delivery rules of the bus against a real nats-server: redelivery after a crash, no second
effect for a duplicate, dead letters for poison messages, with a job.failed event that says why."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from contracts.events import EventEnvelope, JobFailed, JobProgress
from contracts.events.subjects import DLQ_STREAM
from shared.bus import Bus, HandlerContext, JobRejected

pytestmark = pytest.mark.integration


def _progress(stage: str) -> JobProgress:
    return JobProgress(job_id="job-1", job_kind="test", stage=stage, fraction=0.5)


async def _collect_failures(bus: Bus) -> list[JobFailed]:
    failures: list[JobFailed] = []

    async def on_failed(msg: object) -> None:
        failures.append(EventEnvelope.from_bytes(msg.data).payload_as(JobFailed))  # type: ignore[attr-defined]

    await bus.broker.connection.subscribe(JobFailed.subject(), cb=on_failed)
    return failures


async def _wait_until(predicate, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.05)


async def test_duplicate_event_has_no_second_effect(nats_url: str) -> None:
    bus = Bus(nats_url, "dup-test")
    effects: list[str] = []

    @bus.handle(JobProgress)
    async def handler(ctx: HandlerContext[JobProgress]) -> None:
        effects.append(ctx.envelope.id)

    await bus.start()
    try:
        # The same event id published twice inside the duplicate window: stored once.
        await bus.publish(_progress("a"), event_id="evt-a")
        await bus.publish(_progress("a"), event_id="evt-a")
        await _wait_until(lambda: "evt-a" in effects)
        # The same event published again once the window has passed (a retry a day later, a replayed
        # stream): stored again, and the processed marker stops a second effect.
        js = bus.broker.connection.jetstream()
        config = (await js.stream_info("PUYU_EVENTS")).config
        config.duplicate_window = 0.5
        await js.update_stream(config)
        # The server forgets message ids on a timer: on a loaded machine it can fire late, so publish the
        # sealed copy until the server takes it as new (a duplicate ack stores nothing).
        again = EventEnvelope.wrap(_progress("a"), source="dup-test", event_id="evt-a")
        deadline = asyncio.get_running_loop().time() + 20
        while True:
            await asyncio.sleep(0.7)
            ack = await bus.broker.publish(
                again.to_bytes(),
                JobProgress.subject(),
                stream="PUYU_EVENTS",
                headers={
                    "Nats-Msg-Id": bus.message_id(JobProgress.subject(), "evt-a"),
                    "Puyu-Type": again.type,
                },
            )
            if not ack.duplicate:
                break
            assert asyncio.get_running_loop().time() < deadline, "the server never forgot evt-a's message id"
        # The same event id under another message id (another publisher's, who cannot seal it as
        # this one does) is another event: handled, never taken for the first one.
        envelope = EventEnvelope.wrap(_progress("a"), source="test", event_id="evt-a")
        await bus.broker.publish(
            envelope.to_bytes(),
            JobProgress.subject(),
            stream="PUYU_EVENTS",
            headers={"Nats-Msg-Id": "another-msg-id"},
        )
        await bus.publish(_progress("b"), event_id="evt-b")
        await _wait_until(lambda: "evt-b" in effects)
        await asyncio.sleep(0.5)
        assert effects == ["evt-a", "evt-a", "evt-b"]
        stored = (await js.stream_info("PUYU_EVENTS", subjects_filter=JobProgress.subject())).state.messages
        assert stored == 4  # evt-a twice (inside the window once), its other publisher's copy, evt-b
    finally:
        await bus.stop()


async def test_poison_and_rejected_messages_are_dead_lettered_with_their_error(nats_url: str) -> None:
    bus = Bus(nats_url, "poison-test")
    attempts: dict[str, int] = {}

    @bus.handle(JobProgress, max_deliver=3, backoff=(0.1,))
    async def handler(ctx: HandlerContext[JobProgress]) -> None:
        stage = ctx.payload.stage
        attempts[stage] = attempts.get(stage, 0) + 1
        if stage == "always-fails":
            raise RuntimeError("disk on fire")
        if stage == "invalid-spec":
            raise JobRejected("heads do not divide hidden size")

    await bus.start()
    try:
        failures = await _collect_failures(bus)
        await bus.broker.publish(b"{not json", JobProgress.subject(), stream="PUYU_EVENTS")
        bad_payload = EventEnvelope.wrap(_progress("x"), source="test").model_copy(
            update={"payload": {"job_id": "job-1", "fraction": 7}}
        )
        await bus.broker.publish(bad_payload.to_bytes(), JobProgress.subject(), stream="PUYU_EVENTS")
        await bus.publish(_progress("always-fails"), event_id="evt-fail")
        await bus.publish(_progress("invalid-spec"), event_id="evt-reject")
        await bus.publish(_progress("fine"), event_id="evt-fine")  # the service keeps working
        await _wait_until(lambda: len(failures) == 4)

        assert attempts == {"always-fails": 3, "invalid-spec": 1, "fine": 1}
        errors = sorted(f.error for f in failures)
        assert any("malformed event envelope" in e for e in errors)
        assert any("job_kind" in e and "fraction" in e for e in errors), errors
        assert any("disk on fire" in e for e in errors)
        assert any("rejected: heads do not divide hidden size" in e for e in errors)
        assert {f.attempts for f in failures if "disk" in f.error} == {3}

        js = bus.broker.connection.jetstream()
        assert (await js.stream_info(DLQ_STREAM)).state.messages == 4
        dead = await js.get_last_msg(DLQ_STREAM, "puyu.dlq." + JobProgress.subject())
        assert dead.headers and "Puyu-Error" in dead.headers
        # A fact that failed here does not fail the job that produced it (only a job request does).
        assert await bus.jobs.get("job-1") is None
    finally:
        await bus.stop()


CRASHING_CONSUMER = textwrap.dedent(
    """
    import asyncio, os, sys
    from contracts.events import JobProgress
    from shared.bus import Bus

    async def main() -> None:
        bus = Bus(sys.argv[1], "crash-test")

        @bus.handle(JobProgress, ack_wait=2.0)
        async def handler(ctx) -> None:
            print("received", ctx.attempt, flush=True)
            os._exit(9)  # the process dies mid-message, before any ack

        await bus.start()
        await asyncio.sleep(60)

    asyncio.run(main())
    """
)


async def test_handler_crashing_mid_message_gets_it_again(nats_url: str, tmp_path: Path) -> None:
    publisher = Bus(nats_url, "crash-test")
    await publisher.start()  # creates the streams; registers no handler
    await publisher.publish(_progress("work"), event_id="evt-crash")

    script = tmp_path / "crash.py"
    script.write_text(CRASHING_CONSUMER)
    root = Path(__file__).resolve().parents[2]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(script), nats_url, cwd=root, stdout=subprocess.PIPE, env={"PYTHONPATH": str(root)}
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 9 and b"received 1" in out
    await publisher.stop()

    # A new replica of the same service (same durable consumer) gets the message again.
    replica = Bus(nats_url, "crash-test")
    got: list[int] = []

    @replica.handle(JobProgress, ack_wait=2.0)
    async def handler(ctx: HandlerContext[JobProgress]) -> None:
        got.append(ctx.attempt)

    await replica.start()
    try:
        await _wait_until(lambda: got != [], timeout=30)
        assert got == [2]
    finally:
        await replica.stop()


async def test_instance_consumers_expire_when_inactive(nats_url: str) -> None:
    """A consumer named after a process instance carries an inactivity threshold: the server removes
    it once that instance is gone, instead of keeping one consumer per past process forever."""
    bus = Bus(nats_url, "inactive-test")

    @bus.handle(JobProgress, durable="inactive-test-instance-1", inactive_threshold=1.5, idempotent=False)
    async def handler(ctx: HandlerContext[JobProgress]) -> None:
        return None

    await bus.start()
    js = bus.broker.connection.jetstream()
    stream = "PUYU_EVENTS"
    info = await js.consumer_info(stream, "inactive-test-instance-1")
    assert info.config.inactive_threshold == pytest.approx(1.5)
    await bus.stop()
    names: list[str] = []
    for _ in range(40):  # the server sweeps inactive consumers on its own schedule
        await asyncio.sleep(0.25)
        probe = Bus(nats_url, "inactive-probe")
        await probe.start()
        try:
            names = [c.name for c in await probe.broker.connection.jetstream().consumers_info(stream)]
        finally:
            await probe.stop()
        if "inactive-test-instance-1" not in names:
            break
    assert "inactive-test-instance-1" not in names
