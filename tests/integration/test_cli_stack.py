"""The launcher's own nats-server (what `puyu demo` uses): a fresh JetStream of its own, on a port no
service of the stack binds, gone when the stack stops; `puyu status` finds a kept demo's jobs on it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from services.cli.demo import demo_home
from services.cli.stack import NATS_URL_FILE, Stack
from services.cli.status import jobs_nats_url, status
from shared.bus import Bus
from shared.bus.identity import NatsIdentity
from shared.natsserver import answers, free_port
from shared.ports import SERVICES, grpc_port, http_port
from shared.settings import CommonSettings

pytestmark = pytest.mark.integration


def test_own_nats_is_fresh_and_stops_with_the_stack(tmp_path: Path) -> None:
    settings = CommonSettings(home=tmp_path, nats_url="nats://127.0.0.1:4222")
    stack = Stack(settings, restart=False, own_nats=True)
    stack.ensure_nats()  # what start() does first, before it spawns the services
    try:
        url = stack.settings.nats_url
        assert url != "nats://127.0.0.1:4222" and answers(url)
        port = int(url.rsplit(":", 1)[1])
        assert port not in {f(s, settings) for s in SERVICES for f in (grpc_port, http_port)}
        assert (tmp_path / "nats").is_dir()  # its store lives in the stack's home
    finally:
        stack.stop()
    assert not answers(url)


async def _put_job(nats_url: str, identity: NatsIdentity, job_id: str) -> None:
    bus = Bus(nats_url, "test-demo", identity=identity)  # the stack's NATS has users: the operator
    await bus.start()  # creates the job board's bucket, as the services do
    try:
        await bus.jobs.update(job_id, "ingest", state="running", stage="ingest", message="demo job")
    finally:
        await bus.stop()


def test_status_finds_the_jobs_of_a_kept_demo_on_its_own_nats(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # nothing answers at the configured URL: the jobs can only come from the demo's own server
    settings = CommonSettings(home=tmp_path, nats_url=f"nats://127.0.0.1:{free_port()}")
    demo_settings = settings.model_copy(update={"home": demo_home(settings.home)})
    stack = Stack(demo_settings, services=(), restart=False, own_nats=True)  # what `puyu demo` starts
    stack.start()
    try:
        assert jobs_nats_url(settings) == stack.settings.nats_url
        asyncio.run(_put_job(stack.settings.nats_url, stack.operator_identity(), "demo-job-1"))
        capsys.readouterr()
        assert status(settings) == 0
        assert "demo-job-1" in capsys.readouterr().out
    finally:
        stack.stop()
    # the demo gone, status is back on the configured NATS
    assert not (demo_settings.home / NATS_URL_FILE).exists()
    assert jobs_nats_url(settings) == settings.nats_url
    capsys.readouterr()
    status(settings)
    out = capsys.readouterr().out
    assert "demo-job-1" not in out and "unavailable" in out
