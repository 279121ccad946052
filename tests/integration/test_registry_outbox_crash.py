"""Kill -9 the registry between the commit and the publish (and between the publish and its mark):
the restarted registry publishes the event, the stream holds it exactly once, nothing is lost.

The registry runs as a real process on a real nats-server and PostgreSQL. The doomed
process is the real service with one change: its bus kills the process when the relay hands it a
model.* event (before or after the bytes go out), which pins the crash to the exact window.
"""

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import nats
import pytest
from sqlalchemy import text

from contracts.events import ArtifactRef, CheckpointReady, EventEnvelope
from services.model_registry.core.database import make_engine
from services.model_registry.core.registry import Registry
from shared.bus import Bus
from shared.natsserver import NatsServer, free_port

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"

DOOMED = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    from services.model_registry.app import create_service

    when = sys.argv[1]
    service = create_service()
    real = service.runtime.bus.publish_envelope

    async def doomed(env, cls):
        if env.type.startswith("model."):
            if when == "after_publish":
                await real(env, cls)
            os.kill(os.getpid(), signal.SIGKILL)
        await real(env, cls)

    service.runtime.bus.publish_envelope = doomed
    asyncio.run(service.run())
    """
)


@pytest.fixture
def db() -> Iterator[dict[str, str]]:
    """A fresh PostgreSQL schema. (SQLite takes the same code path: the core's crash test and the
    start-up relay test run on it; process starts are too costly to repeat every case here.)"""
    try:
        admin = make_engine(PG_URL)
        with admin.connect() as c:
            c.execute(text("select 1"))
    except Exception as exc:
        pytest.skip(f"PostgreSQL not answering at {PG_URL}: {exc}")
    schema = f"registry_crash_{uuid.uuid4().hex[:12]}"
    with admin.begin() as c:
        c.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield {"PUYU_DATABASE_URL": PG_URL, "PUYU_REGISTRY_DB_SCHEMA": schema}
    finally:
        with admin.begin() as c:
            c.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)


def registry_env(tmp_path: Path, nats_url: str, db: dict[str, str]) -> dict[str, str]:
    return {
        **os.environ,
        **db,
        "PUYU_HOME": str(tmp_path / "home"),
        "PUYU_NATS_URL": nats_url,
        "PUYU_REGISTRY_GRPC_PORT": str(free_port()),
        "PUYU_REGISTRY_HTTP_PORT": str(free_port()),
        "PUYU_REGISTRY_OUTBOX_INTERVAL": "0.2",
        "PUYU_LOG_JSON": "false",
    }


async def registered_events(nats_url: str, wait: float) -> list[EventEnvelope]:
    """Every model.registered message in the stream (an ephemeral consumer from the start)."""
    nc = await nats.connect(nats_url)
    try:
        sub = await nc.jetstream().pull_subscribe("puyu.events.model.registered", stream="PUYU_EVENTS")
        out: list[EventEnvelope] = []
        with contextlib.suppress(nats.errors.TimeoutError):
            while True:
                for m in await sub.fetch(10, timeout=wait):
                    out.append(EventEnvelope.from_bytes(m.data))
                    await m.ack()
        return out
    finally:
        await nc.close()


async def wait_healthy(env: dict[str, str], proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    url = f"http://127.0.0.1:{env['PUYU_REGISTRY_HTTP_PORT']}/health"
    async with httpx.AsyncClient() as client:
        for _ in range(int(timeout * 10)):
            assert proc.poll() is None, "the registry exited during start-up"
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(url)).status_code == 200:
                    return
            await asyncio.sleep(0.1)
    raise AssertionError("registry did not become healthy")


def registry_engine(db: dict[str, str]) -> Registry:
    return Registry(make_engine(db["PUYU_DATABASE_URL"], schema=db.get("PUYU_REGISTRY_DB_SCHEMA")))


@pytest.mark.slow
@pytest.mark.parametrize("when", ["before_publish", "after_publish"])
async def test_kill_between_commit_and_publish_loses_no_event(
    tmp_path: Path, db: dict[str, str], when: str
) -> None:
    with NatsServer(tmp_path / "nats") as server:
        env = registry_env(tmp_path, server.url, db)
        doomed = spawn([sys.executable, "-c", DOOMED, when], env, tmp_path / "doomed.log")
        try:
            await wait_healthy(env, doomed)
            bus = Bus(server.url, "trainer")  # a checkpoint is the trainer's fact to announce
            await bus.start()
            await bus.publish(
                CheckpointReady(
                    job_id="job-1",
                    run_id="run-1",
                    model_name="crashy",
                    step=10,
                    checkpoint=ArtifactRef(  # inside the registry's artifact store (HOME/artifacts)
                        uri=(tmp_path / "home" / "artifacts" / "ckpt" / "1").resolve().as_uri(),
                        sha256="c" * 64,
                        size_bytes=1,
                    ),
                ),
                event_id="ckpt:run-1:10",
            )
            await bus.stop()
            assert await asyncio.to_thread(doomed.wait, 60) == -signal.SIGKILL
        finally:
            if doomed.poll() is None:
                doomed.kill()

        # The state change is committed; its event is in the outbox, not yet marked as sent.
        reg = registry_engine(db)
        assert [v.version for v in reg.list_versions("crashy")] == [1]
        pending = [EventEnvelope.model_validate(e).id for _, e in reg.pending_outbox()]
        assert pending == ["registered:crashy:1"]
        on_wire = await registered_events(server.url, 0.5)
        assert [e.id for e in on_wire] == ([] if when == "before_publish" else ["registered:crashy:1"])

        # A new registry process: it relays what the dead one left, and the stream keeps one copy.
        env = registry_env(tmp_path, server.url, db)
        proc = spawn([sys.executable, "-m", "services.model_registry"], env, tmp_path / "restarted.log")
        try:
            await wait_healthy(env, proc)
            for _ in range(100):
                if not reg.pending_outbox():
                    break
                await asyncio.sleep(0.1)
            assert reg.pending_outbox() == []
            events = await registered_events(server.url, 1.0)
            assert [e.id for e in events] == ["registered:crashy:1"]
            assert events[0].payload["run_id"] == "run-1"
            # the checkpoint event, redelivered or not, registered one version only
            assert [v.version for v in reg.list_versions("crashy")] == [1]
        finally:
            proc.send_signal(signal.SIGTERM)
            await asyncio.to_thread(proc.wait, 30)
            reg.engine.dispose()
