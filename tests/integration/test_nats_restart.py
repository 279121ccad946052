"""A nats-server restart under load: chat requests through a routing gateway succeed again soon after.

The smallest topology of compose.yaml: a gateway that only routes and one inference worker, each its
own process with its own identity, on a nats-server secured as the local stack secures it. A restart
loses the memory-backed ``puyu_workers`` bucket; before the bus made its streams, buckets and
consumers again after a reconnect, the worker's announcements had nowhere to go and every request
was answered 404 from the moment the gateway's view of the worker expired.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from contracts.events import ArtifactRef, ModelPromoted, ModelRef
from services.cli.stack import start_secured_nats
from shared.artifacts import ArtifactStore
from shared.bus import Bus
from shared.bus.natsauth import AuthDir
from shared.bus.permissions import GATEWAY, WORKER
from shared.natsserver import NatsServer, free_port
from tests.support.fake_registry import FakeRegistry

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]

WORKER_TTL = 2.0  # seconds the gateway keeps a worker it hears nothing from
RECOVERY_BOUND = 30.0  # seconds after the restart by which requests must succeed again
STEADY = 4 * WORKER_TTL  # then they keep succeeding this long (past any stale view of the worker)


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "services.inference_gateway", *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _wait_healthy(procs: dict[str, subprocess.Popen[bytes]], ports: dict[str, int], logs: Path) -> None:
    deadline = time.monotonic() + 180
    for name, port in ports.items():
        while True:
            assert procs[name].poll() is None, (logs / f"{name}.log").read_text()[-3000:]
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, f"{name} not healthy"
            time.sleep(0.3)


async def _complete(http: httpx.AsyncClient, i: int) -> int:
    body = {"model": "demo", "prompt": f"Traders meet {i}", "max_tokens": 4, "temperature": 0}
    try:
        return (await http.post("/v1/completions", json=body)).status_code
    except httpx.HTTPError:
        return 598


def test_requests_succeed_again_after_a_nats_restart(tmp_path: Path) -> None:
    from tests.support.tiny_model import build_serving_model  # torch: only when it runs

    store = ArtifactStore((tmp_path / "artifacts").as_uri())
    artifact = store.put_dir(
        build_serving_model(tmp_path / "v1", seed=1, max_positions=2048), "models/demo/1"
    )
    nats, auth = start_secured_nats(tmp_path / "home", free_port(), workers=("worker-a",))
    registry = FakeRegistry().start()  # attests the promotion (nothing to restore at start)
    base = {
        **os.environ,
        "PUYU_HOME": str(tmp_path / "home"),
        "PUYU_NATS_URL": nats.url,
        "PUYU_ARTIFACT_ROOT": store.root_uri,
        "PUYU_LOG_JSON": "false",
        "PUYU_REGISTRY_GRPC": registry.target,
        "PUYU_GATEWAY_NUM_THREADS": "1",
        "PUYU_GATEWAY_ANNOUNCE_INTERVAL": "0.2",
        "OMP_NUM_THREADS": "1",
    }
    ports = {name: (free_port(), free_port()) for name in ("worker-a", "gateway")}
    procs = {
        "worker-a": _spawn(
            ["worker"],
            {
                **base,
                "PUYU_GATEWAY_INSTANCE": "worker-a",
                "PUYU_NATS_NKEY_SEED_FILE": str(auth.seed_file_of(WORKER, "worker-a")),
                "PUYU_GATEWAY_GRPC_PORT": str(ports["worker-a"][0]),
                "PUYU_GATEWAY_HTTP_PORT": str(ports["worker-a"][1]),
            },
            tmp_path / "worker-a.log",
        ),
        "gateway": _spawn(
            [],
            {
                **base,
                "PUYU_GATEWAY_LOCAL_MODELS": "false",  # a pure router, as in compose.yaml
                "PUYU_GATEWAY_WORKER_TTL": str(WORKER_TTL),
                "PUYU_NATS_NKEY_SEED_FILE": str(auth.seed_file_of(GATEWAY, "gateway-0")),
                "PUYU_GATEWAY_GRPC_PORT": str(ports["gateway"][0]),
                "PUYU_GATEWAY_HTTP_PORT": str(ports["gateway"][1]),
            },
            tmp_path / "gateway.log",
        ),
    }
    try:
        _wait_healthy(procs, {name: p[1] for name, p in ports.items()}, tmp_path)
        registry.promote("demo", 1, artifact)
        results, restarted_at = asyncio.run(_restart_under_load(nats, auth, artifact, ports["gateway"][1]))
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        nats.stop()
        registry.stop()

    after = [(t - restarted_at, status) for t, status in results if t > restarted_at]
    failed = [t for t, status in after if status != 200]
    recovered = max(failed, default=0.0)
    tail = [status for t, status in after if t > recovered]
    logs = (tmp_path / "gateway.log").read_text()[-2000:]
    assert recovered <= RECOVERY_BOUND, f"requests still failing {recovered:.1f}s after the restart\n{logs}"
    assert tail and all(s == 200 for s in tail)
    assert after[-1][0] - recovered >= STEADY, f"only {after[-1][0] - recovered:.1f}s of successes\n{logs}"


async def _restart_under_load(
    nats: NatsServer, auth: AuthDir, artifact: ArtifactRef, gateway_port: int
) -> tuple[list[tuple[float, int]], float]:
    registry = Bus(nats.url, "model-registry", identity=auth.identity("model-registry"))
    await registry.start()
    try:
        promoted = ModelPromoted(
            model=ModelRef(model_name="demo", version=1), artifact=artifact, reason="test"
        )  # type: ignore[arg-type]
        await registry.publish(promoted, event_id="promoted:demo:1")
    finally:
        await registry.stop()
    results: list[tuple[float, int]] = []
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gateway_port}", timeout=10) as http:
        deadline = time.monotonic() + 180
        while await _complete(http, 0) != 200:  # the worker deployed and announced it
            assert time.monotonic() < deadline, "the worker never served the promoted model"
            await asyncio.sleep(0.5)
        stop = asyncio.Event()

        async def client(c: int) -> None:
            i = 0
            while not stop.is_set():
                i += 1
                results.append((time.monotonic(), await _complete(http, c * 10_000 + i)))
                await asyncio.sleep(0.05)

        clients = [asyncio.create_task(client(c)) for c in range(2)]
        await asyncio.sleep(3)
        await asyncio.to_thread(nats.stop)
        await asyncio.sleep(2)
        await asyncio.to_thread(nats.start)
        restarted_at = time.monotonic()
        # until requests have succeeded for STEADY seconds in a row, or the bound has passed
        end = restarted_at + RECOVERY_BOUND + STEADY + 5
        while time.monotonic() < end:
            await asyncio.sleep(0.5)
            now = time.monotonic()
            recent = [s for t, s in results if t > restarted_at]
            streak = [s for t, s in results if t > now - STEADY - 1]
            if recent and now - restarted_at > STEADY + 1 and streak and all(s == 200 for s in streak):
                break
        stop.set()
        await asyncio.gather(*clients)
    return results, restarted_at
