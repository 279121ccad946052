"""The registry and the inference gateway as real processes on a real nats-server: two versions of
a tiny model are registered from checkpoint events, evaluated, promoted in turn (the gateway follows
each), then a rollback by command restores the previous champion and the gateway serves it again.
"""

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from contracts.events import ArtifactRef, CheckpointReady, EvaluationCompleted, ModelRef, TaskResult
from services.model_registry.cli import models_rollback, models_show
from shared.artifacts import ArtifactStore
from shared.bus import Bus
from shared.natsserver import NatsServer, free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]


async def wait_for(check: Any, what: str, timeout: float = 90) -> Any:
    """Poll the async ``check`` until it returns something truthy."""
    deadline = asyncio.get_running_loop().time() + timeout
    last: Any = None
    while asyncio.get_running_loop().time() < deadline:
        with contextlib.suppress(httpx.HTTPError, KeyError):
            last = await check()
            if last:
                return last
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}; last: {last}")


def spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    with NatsServer(tmp_path / "nats") as server:
        artifacts = tmp_path / "artifacts"
        ports = {k: str(free_port()) for k in ("rg", "rh", "gg", "gh")}
        env = {
            **os.environ,
            "PUYU_HOME": str(tmp_path / "home"),
            "PUYU_NATS_URL": server.url,
            "PUYU_ARTIFACT_ROOT": artifacts.as_uri(),
            "PUYU_LOG_JSON": "false",
            "PUYU_REGISTRY_GRPC_PORT": ports["rg"],
            "PUYU_REGISTRY_GRPC": f"127.0.0.1:{ports['rg']}",  # where the gateway asks for attestations
            "PUYU_REGISTRY_HTTP_PORT": ports["rh"],
            "PUYU_REGISTRY_OUTBOX_INTERVAL": "0.2",
            "PUYU_GATEWAY_GRPC_PORT": ports["gg"],
            "PUYU_GATEWAY_HTTP_PORT": ports["gh"],
            "PUYU_GATEWAY_NUM_THREADS": "1",
            "PUYU_GATEWAY_INSTANCE": "gw-test",
            "OMP_NUM_THREADS": "1",
        }
        procs = [
            spawn([sys.executable, "-m", module], env, tmp_path / f"{module}.log")
            for module in ("services.model_registry", "services.inference_gateway")
        ]
        bus = Bus(server.url, "trainer")  # checkpoints are taken only from the trainer (or finetuner)
        evaluator = Bus(server.url, "evaluator")  # and evaluations only from the evaluator
        try:
            registry = f"http://127.0.0.1:{ports['rh']}"
            gateway = f"http://127.0.0.1:{ports['gh']}"
            async with httpx.AsyncClient(timeout=30) as client:
                for base in (registry, gateway):

                    async def healthy(base: str = base) -> bool:
                        assert all(p.poll() is None for p in procs), "a service exited; see its log"
                        return (await client.get(base + "/health")).status_code == 200

                    await wait_for(healthy, f"{base} health")
                await bus.start()
                await evaluator.start()
                yield {
                    "bus": bus,
                    "evaluator": evaluator,
                    "client": client,
                    "registry": registry,
                    "gateway": gateway,
                    "store": ArtifactStore(artifacts.as_uri()),
                }
        finally:
            await bus.stop()
            await evaluator.stop()
            for p in procs:
                p.send_signal(signal.SIGTERM)
            for p in procs:
                try:
                    await asyncio.to_thread(p.wait, 30)
                except subprocess.TimeoutExpired:
                    p.kill()


def evaluation(version: int, ppl: float) -> EvaluationCompleted:
    return EvaluationCompleted(
        model=ModelRef(model_name="tiny", version=version),
        results=[
            TaskResult(
                task="perplexity",
                metrics={"perplexity": ppl},
                primary_metric="perplexity",
                higher_is_better=False,
                version_hash="ppl-v1",
                num_samples=16,
            )
        ],
    )


async def test_rollback_restores_the_previous_champion_and_the_gateway_follows(
    stack: dict[str, Any], tmp_path: Path
) -> None:
    from tests.support.tiny_model import build_serving_model  # torch: only when it runs

    bus, client, store = stack["bus"], stack["client"], stack["store"]
    registry, gateway = stack["registry"], stack["gateway"]

    refs: dict[int, ArtifactRef] = {}
    for version, seed in ((1, 1), (2, 2)):
        src = await asyncio.to_thread(build_serving_model, tmp_path / f"build-{version}", seed=seed)
        refs[version] = await asyncio.to_thread(store.put_dir, src, f"checkpoints/run-{version}/final")
        await bus.publish(
            CheckpointReady(
                job_id=f"job-{version}",
                run_id=f"run-{version}",
                model_name="tiny",
                step=100,
                checkpoint=refs[version],
            ),
            event_id=f"ckpt:run-{version}:100",
        )

    async def registered() -> bool:
        return (await client.get(f"{registry}/v1/models/tiny")).json()["latest_version"] == 2

    await wait_for(registered, "both versions registered")

    async def served_version() -> int | None:
        models = (await client.get(f"{gateway}/v1/models")).json()["data"]
        return next((m["version"] for m in models if m["id"] == "tiny"), None)

    async def answer() -> str:
        body = {"model": "tiny", "prompt": "the capital of aldoria", "max_tokens": 12, "temperature": 0}
        r = await client.post(f"{gateway}/v1/completions", json=body)
        r.raise_for_status()
        return str(r.json()["choices"][0]["text"])

    async def deployed(version: int) -> bool:
        v = (await client.get(f"{registry}/v1/models/tiny/versions/{version}")).json()
        return any(d["state"] == "ready" and d["instance"] == "gw-test" for d in v["deployments"])

    # v1: first version, passes the floors -> champion -> the gateway loads it and says so.
    await stack["evaluator"].publish(evaluation(1, 40.0), event_id="eval:tiny:1")
    await wait_for(lambda: _is(served_version, 1), "the gateway serving v1")
    await wait_for(lambda: deployed(1), "deployment.ready of v1 recorded on the version")
    answer_v1 = await answer()

    # v2: better perplexity -> champion -> the gateway switches.
    await stack["evaluator"].publish(evaluation(2, 30.0), event_id="eval:tiny:2")
    await wait_for(lambda: _is(served_version, 2), "the gateway serving v2")
    await wait_for(lambda: deployed(2), "deployment.ready of v2 recorded on the version")
    answer_v2 = await answer()
    assert answer_v1 != answer_v2, "the two tiny models must answer differently for this test to mean much"

    # Rollback by command (what `puyu models rollback tiny` calls).
    out = await asyncio.to_thread(models_rollback, "tiny", "v2 answers badly", registry)
    assert (out["restored"], out["rolled_back"]) == (1, 2)
    await wait_for(lambda: _is(served_version, 1), "the gateway serving v1 again")
    assert await answer() == answer_v1  # the same weights as before, not just the same label

    champ = await asyncio.to_thread(models_show, "tiny@champion", registry)
    assert champ["version"] == 1 and champ["status"] == "champion"
    v2 = await asyncio.to_thread(models_show, "tiny:2", registry)
    assert v2["status"] == "rejected"
    audit = (await client.get(f"{registry}/v1/audit", params={"model": "tiny"})).json()
    rollback = next(a for a in audit if a["action"] == "rollback")
    assert "v2 answers badly" in rollback["reason"] and "from version 2 to version 1" in rollback["reason"]
    promotions = [a for a in audit if a["action"] == "promote"]
    assert {a["version"] for a in promotions} == {1, 2}
    assert all("perplexity" in a["reason"] for a in promotions)  # each decision says why


async def _is(fn: Any, expected: Any) -> bool:
    return bool(await fn() == expected)
