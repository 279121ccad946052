"""The gateway serves what the registry attests: on a real nats-server, a promotion the registry never
made, one whose artifact is not the registered one, one from another service, and a registered
folder swapped after registration are not deployed."""

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from contracts.events import DeploymentFailed, DeploymentReady, JobFailed, ModelPromoted, ModelRef
from services.inference_gateway.app import create_service
from services.inference_gateway.config import GatewaySettings
from shared.artifacts import ArtifactStore
from shared.bus import Bus, HandlerContext
from shared.natsserver import NatsServer, free_port
from tests.support.fake_registry import FakeRegistry
from tests.support.tiny_model import build_serving_model

pytestmark = pytest.mark.integration


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    torch.set_num_threads(1)
    store = ArtifactStore((tmp_path / "artifacts").as_uri())
    refs = {
        v: store.put_dir(build_serving_model(tmp_path / f"v{v}", seed=v), f"models/demo/{v}")
        for v in (1, 2, 3)
    }
    registry = FakeRegistry().start()
    with NatsServer(tmp_path / "nats") as nats:
        settings = GatewaySettings(
            nats_url=nats.url,
            artifact_root=store.root_uri,
            home=tmp_path,
            log_json=False,
            gateway_grpc_port=free_port(),
            gateway_http_port=free_port(),
            registry_grpc=registry.target,
        )
        service = create_service(settings)
        task = asyncio.create_task(service.run())
        publisher = Bus(nats.url, "model-registry")  # what the registry would publish
        stranger = Bus(nats.url, "agent-runtime")
        outcomes: asyncio.Queue[Any] = asyncio.Queue()

        @publisher.handle(DeploymentReady)
        async def on_ready(ctx: HandlerContext[DeploymentReady]) -> None:
            await outcomes.put(ctx.payload)

        @publisher.handle(DeploymentFailed)
        async def on_failed(ctx: HandlerContext[DeploymentFailed]) -> None:
            await outcomes.put(ctx.payload)

        @publisher.handle(JobFailed)
        async def on_dead_letter(ctx: HandlerContext[JobFailed]) -> None:
            await outcomes.put(ctx.payload)

        await publisher.start()
        await stranger.start()
        try:
            yield {
                "registry": registry,
                "publisher": publisher,
                "stranger": stranger,
                "outcomes": outcomes,
                "refs": refs,
                "base": f"http://127.0.0.1:{settings.gateway_http_port}",
            }
        finally:
            await stranger.stop()
            await publisher.stop()
            service.stop()
            await asyncio.wait_for(task, 30)
            registry.stop()


async def served(base: str) -> dict[str, int]:
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        return {m["id"]: m["version"] for m in (await http.get("/v1/models")).json()["data"]}


async def test_only_what_the_registry_attests_is_deployed(gateway: dict[str, Any]) -> None:
    registry, publisher, outcomes, refs = (
        gateway["registry"],
        gateway["publisher"],
        gateway["outcomes"],
        gateway["refs"],
    )

    async def promote(
        version: int, artifact_of: int | None = None, bus: Bus | None = None, outcomes_expected: int = 1
    ) -> Any:
        """The promotion's outcome (with ``outcomes_expected`` 2: a deployment.failed, then the dead
        letter's job.failed)."""
        event = ModelPromoted(
            model=ModelRef(model_name="demo", version=version),
            artifact=refs[artifact_of or version],
            reason="test",
        )
        await (bus or publisher).publish(event)
        got = [await asyncio.wait_for(outcomes.get(), 60) for _ in range(outcomes_expected)]
        if outcomes_expected == 2:
            assert (
                isinstance(got[1], JobFailed)
                and got[1].error == f"rejected: {got[0].error.split(': ', 1)[1]}"
            )
        return got[0]

    # A promotion the registry never made: refused, reported, nothing served.
    got = await promote(1, outcomes_expected=2)
    assert isinstance(got, DeploymentFailed) and "not attested by the registry" in got.error
    assert await served(gateway["base"]) == {}

    # The registry's champion: served.
    registry.promote("demo", 1, refs[1])
    got = await promote(1)
    assert isinstance(got, DeploymentReady) and got.model.version == 1

    # Another version than the registry's champion: refused, v1 keeps serving.
    got = await promote(2, outcomes_expected=2)
    assert isinstance(got, DeploymentFailed) and "is version 1, not 2" in got.error

    # The champion's number with another artifact: a forgery, dead-lettered with no deployment.failed
    # (that would roll the real champion back).
    got = await promote(1, artifact_of=2)
    assert isinstance(got, JobFailed) and "the event names" in got.error and refs[2].uri in got.error

    # From a service that does not own model.* facts: dead-lettered before anything is asked.
    registry.promote("demo", 2, refs[2])
    got = await promote(2, bus=gateway["stranger"])
    assert isinstance(got, JobFailed) and "only model-registry may publish it" in got.error
    assert set((await served(gateway["base"])).values()) == {1}

    # The registered folder swapped after registration: its digest is checked before it loads.
    registry.promote("demo", 3, refs[3])
    swapped = Path(refs[3].uri.removeprefix("file://")) / "config.json"
    swapped.write_text(swapped.read_text().replace("{", '{"swapped": true, ', 1))
    got = await promote(3)
    assert isinstance(got, DeploymentFailed) and "sha256" in got.error and refs[3].sha256 in got.error
    assert set((await served(gateway["base"])).values()) == {1}
