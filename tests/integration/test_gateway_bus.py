"""The gateway on a real nats-server: model.promoted → deployment.ready, answers, and a lossless switch."""

import asyncio
from pathlib import Path

import httpx
import pytest
import torch

from contracts.events import DeploymentReady, ModelPromoted, ModelRef
from contracts.events.inference import WorkerAnnouncement
from contracts.events.subjects import WORKERS_BUCKET
from services.inference_gateway.app import create_service
from services.inference_gateway.config import GatewaySettings
from shared.artifacts import ArtifactStore
from shared.bus import Bus, HandlerContext
from shared.natsserver import NatsServer, free_port
from tests.support.fake_registry import FakeRegistry
from tests.support.tiny_model import build_serving_model

pytestmark = pytest.mark.integration


async def test_promotion_deploys_and_switch_loses_no_request(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    store = ArtifactStore((tmp_path / "artifacts").as_uri())
    refs = {
        v: store.put_dir(build_serving_model(tmp_path / f"v{v}", seed=v), f"models/demo/{v}") for v in (1, 2)
    }
    registry = FakeRegistry().start()  # attests each promotion the test publishes
    with NatsServer(tmp_path / "nats") as nats:
        settings = GatewaySettings(
            registry_grpc=registry.target,
            nats_url=nats.url,
            artifact_root=store.root_uri,
            home=tmp_path,
            log_json=False,
            gateway_grpc_port=free_port(),
            gateway_http_port=free_port(),
            gateway_announce_interval=0.1,
        )
        service = create_service(settings)
        task = asyncio.create_task(service.run())
        probe = Bus(nats.url, "model-registry")
        ready: asyncio.Queue[DeploymentReady] = asyncio.Queue()

        @probe.handle(DeploymentReady)
        async def on_ready(ctx: HandlerContext[DeploymentReady]) -> None:
            await ready.put(ctx.payload)

        await probe.start()
        base = f"http://127.0.0.1:{settings.gateway_http_port}"
        try:

            async def promote(v: int) -> DeploymentReady:
                registry.promote("demo", v, refs[v])
                await probe.publish(
                    ModelPromoted(
                        model=ModelRef(model_name="demo", version=v), artifact=refs[v], reason="test"
                    ),
                    event_id=f"promoted:demo:{v}",
                )
                return await asyncio.wait_for(ready.get(), 60)

            got = await promote(1)
            assert (got.model.version, got.served_name, got.instance) == (1, "demo", "gateway-0")
            async with httpx.AsyncClient(base_url=base, timeout=60) as http:
                r = await http.post(
                    "/v1/completions",
                    json={"model": "demo@champion", "prompt": "The river", "max_tokens": 5, "temperature": 0},
                )
                assert r.status_code == 200, r.text
                assert r.json()["choices"][0]["finish_reason"] in ("stop", "length")

                # requests in flight on v1 while v2 is promoted: every one must finish
                async def ask(i: int) -> httpx.Response:
                    return await http.post(
                        "/v1/completions",
                        json={
                            "model": "demo",
                            "prompt": f"Traders meet {i}",
                            "max_tokens": 40,
                            "temperature": 0,
                            "stop": ["@@@@"],
                        },
                    )

                inflight = [asyncio.create_task(ask(i)) for i in range(6)]
                await asyncio.sleep(0.1)
                switch = asyncio.create_task(promote(2))
                during = []
                while not switch.done():
                    during.append(await ask(99))
                got = await switch
                results = [*await asyncio.gather(*inflight), *during]
                assert all(r.status_code == 200 for r in results), [
                    r.text for r in results if r.status_code != 200
                ]
                models = (await http.get("/v1/models")).json()["data"]
                assert {m["id"]: m["version"] for m in models}["demo:2"] == 2
                assert "demo:1" not in {m["id"] for m in models}
            assert got.model.version == 2
            # the worker announces what it serves and its load in the puyu_workers bucket
            kv = await probe.key_value(WORKERS_BUCKET)
            for _ in range(100):
                ann = WorkerAnnouncement.model_validate_json((await kv.get("gateway-0")).value)
                if [s.version for s in ann.served] == [2]:
                    break
                await asyncio.sleep(0.05)
            assert [(s.model_name, s.version, s.state) for s in ann.served] == [("demo", 2, "ready")]
            assert "demo@champion" in ann.served[0].names and ann.served[0].free_blocks > 0
            assert ann.http_url == base
        finally:
            await probe.stop()
            service.stop()
            await asyncio.wait_for(task, 30)
            registry.stop()
