"""The registry as a running service: real nats-server, SQLite, gRPC and REST."""

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import nats
import pytest

from contracts.events import (
    ArtifactRef,
    CheckpointReady,
    DeploymentFailed,
    EvaluationCompleted,
    EventEnvelope,
    EventPayload,
    ModelRef,
    TaskResult,
)
from contracts.proto.puyu.registry.v1 import registry_pb2 as pb
from contracts.proto.puyu.registry.v1 import registry_pb2_grpc
from services.model_registry.app import create_service
from services.model_registry.cli import (
    RegistryError,
    models_list,
    models_promote,
    models_promote_ref,
    models_rollback,
    models_show,
    models_tag,
)
from services.model_registry.config import RegistrySettings
from services.model_registry.core import PromotionPolicy
from shared.bus import Bus
from shared.natsserver import NatsServer, free_port

pytestmark = pytest.mark.integration


@pytest.fixture
async def stack(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[dict[str, Any]]:
    server = NatsServer(tmp_path / "nats").start()
    settings = RegistrySettings(
        home=tmp_path,
        nats_url=server.url,
        registry_grpc_port=free_port(),
        registry_http_port=free_port(),
        log_json=False,
        registry_outbox_interval=0.2,
        registry_policy=getattr(request, "param", None) or PromotionPolicy(),
        artifact_root="file:///ckpt",  # where ckpt() puts its checkpoints
    )
    service = create_service(settings)
    task = asyncio.create_task(service.run())
    base = f"http://127.0.0.1:{settings.registry_http_port}"
    async with httpx.AsyncClient() as client:
        for _ in range(100):
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(base + "/health")).status_code == 200:
                    break
            await asyncio.sleep(0.1)
    client_bus = Publishers(server.url)
    await client_bus.start()
    nc = await nats.connect(server.url)
    sub = await nc.jetstream().pull_subscribe("puyu.events.model.>", stream="PUYU_EVENTS")
    try:
        yield {
            "bus": client_bus,
            "sub": sub,
            "base": base,
            "grpc": f"127.0.0.1:{settings.registry_grpc_port}",
            "nc": nc,
            "url": server.url,
        }
    finally:
        await nc.close()
        await client_bus.stop()
        service.stop()
        await asyncio.wait_for(task, 30)
        server.stop()


class Publishers:
    """Publishes each fact as the service that owns it (the registry refuses any other source)."""

    def __init__(self, url: str) -> None:
        self.buses = {name: Bus(url, name) for name in ("trainer", "evaluator", "inference-gateway")}

    async def start(self) -> None:
        for bus in self.buses.values():
            await bus.start()

    async def stop(self) -> None:
        for bus in self.buses.values():
            await bus.stop()

    async def publish(self, payload: EventPayload, **kw: Any) -> EventEnvelope:
        owner = {CheckpointReady: "trainer", EvaluationCompleted: "evaluator"}.get(
            type(payload), "inference-gateway"
        )
        return await self.buses[owner].publish(payload, **kw)


async def next_event(sub: Any, timeout: float = 20) -> EventEnvelope:
    msgs = await sub.fetch(1, timeout=timeout)
    await msgs[0].ack()
    return EventEnvelope.from_bytes(msgs[0].data)


def ckpt(run: str, n: int) -> CheckpointReady:
    return CheckpointReady(
        job_id=f"job-{run}",
        run_id=run,
        model_name="demo",
        step=100,
        checkpoint=ArtifactRef(uri=f"file:///ckpt/{run}", sha256=f"{n:064x}", size_bytes=10),
    )


def evaluation(version: int, ppl: float, acc: float) -> EvaluationCompleted:
    return EvaluationCompleted(
        model=ModelRef(model_name="demo", version=version),
        results=[
            TaskResult(
                task="perplexity",
                metrics={"perplexity": ppl},
                primary_metric="perplexity",
                higher_is_better=False,
                version_hash="p",
                num_samples=8,
            ),
            TaskResult(
                task="demo_facts",
                metrics={"accuracy": acc},
                primary_metric="accuracy",
                higher_is_better=True,
                version_hash="f",
                num_samples=8,
            ),
        ],
    )


async def test_chain_register_promote_reject_rollback(stack: dict[str, Any]) -> None:
    bus, sub = stack["bus"], stack["sub"]
    first = await bus.publish(ckpt("r1", 1), event_id="ckpt:r1:100")
    await bus.publish(ckpt("r1", 1), event_id="ckpt:r1:100:again")  # same checkpoint, a different event id
    reg = await next_event(sub)
    assert reg.id == "registered:demo:1" and reg.correlation_id == first.correlation_id
    assert (await next_event(sub)).id == "registered:demo:2"

    await bus.publish(evaluation(1, 40.0, 0.3), event_id="eval:demo:1")
    promoted = await next_event(sub)
    assert promoted.type == "model.promoted" and promoted.id == "promoted:demo:1"
    assert "first version" in promoted.payload["reason"]

    await bus.publish(evaluation(2, 80.0, 0.1), event_id="eval:demo:2")
    rejected = await next_event(sub)
    assert rejected.type == "model.rejected" and rejected.payload["champion"] == {
        "model_name": "demo",
        "version": 1,
    }
    assert "perplexity" in rejected.payload["reason"]

    async with grpc.aio.insecure_channel(stack["grpc"]) as ch:
        stub = registry_pb2_grpc.ModelRegistryStub(ch)
        champ = await stub.GetVersion(pb.GetVersionRequest(model_name="demo", alias="champion"))
        assert champ.version == 1 and "champion" in champ.aliases
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetVersion(pb.GetVersionRequest(model_name="nope", version=1))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetVersion(pb.GetVersionRequest(model_name="demo"))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        await stub.SetAlias(
            pb.SetAliasRequest(model_name="demo", alias="champion", version=2, reason="try it")
        )
        models = await stub.ListModels(pb.ListModelsRequest())
        assert [(m.model_name, m.latest_version, m.champion_version) for m in models.models] == [
            ("demo", 2, 2)
        ]
        assert (await next_event(sub)).payload["model"]["version"] == 2
        tags = await stub.SetTags(pb.SetTagsRequest(model_name="demo", version=2, set={"stage": "canary"}))
        assert dict(tags.tags) == {"stage": "canary"}
        card = await stub.GetModelCard(pb.GetVersionRequest(model_name="demo", alias="champion"))
        assert card.markdown.startswith("---\n") and "demo version 2" in card.markdown
        back = await stub.Rollback(pb.RollbackRequest(model_name="demo", reason="canary failed"))
        assert (back.restored, back.rolled_back) == (1, 2) and "canary failed" in back.reason
        assert (await next_event(sub)).payload["model"]["version"] == 1
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Rollback(pb.RollbackRequest(model_name="demo"))  # v1 had no predecessor
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        audit = await stub.ListAudit(pb.ListAuditRequest(model_name="demo", limit=50))
        assert audit.entries[0].action == "rollback" and "canary failed" in audit.entries[0].reason
        assert {"register", "promote", "reject", "manual_promote", "tag"} <= {e.action for e in audit.entries}
        await stub.SetAlias(pb.SetAliasRequest(model_name="demo", alias="champion", version=2))
    assert (await next_event(sub)).payload["model"]["version"] == 2

    url = stack["base"]
    out = await asyncio.to_thread(models_rollback, "demo", "regression found", url)
    assert out["restored"] == 1
    restored = await next_event(sub)
    assert restored.type == "model.promoted" and restored.payload["model"]["version"] == 1
    assert "regression found" in restored.payload["reason"]
    shown = await asyncio.to_thread(models_show, "demo@champion", url)
    assert shown["version"] == 1
    assert (await asyncio.to_thread(models_list, url))[0]["champion_version"] == 1
    async with httpx.AsyncClient(base_url=url) as client:
        assert (await client.get("/v1/models/demo/versions/9")).status_code == 404
        card = (await client.get("/v1/models/demo/versions/1/card")).text
        assert "model-index" in card and "perplexity" in card
        audit = (await client.get("/v1/audit", params={"model": "demo"})).json()
        assert {"register", "promote", "reject", "manual_promote", "rollback"} <= {a["action"] for a in audit}
        assert json.dumps(audit)  # serialisable
        paths = (await client.get("/openapi.json")).json()["paths"]
        assert {"/v1/models/{name}/promote", "/v1/models/{name}/rollback", "/v1/audit"} <= set(paths)


@pytest.mark.parametrize("stack", [PromotionPolicy(mode="manual")], indirect=True)
async def test_manual_mode_deployment_failure_and_tags(stack: dict[str, Any]) -> None:
    bus, sub, url = stack["bus"], stack["sub"], stack["base"]
    for run, n in (("r1", 1), ("r2", 2)):
        await bus.publish(ckpt(run, n), event_id=f"ckpt:{run}:100")
        assert (await next_event(sub)).type == "model.registered"

    # Manual mode: the gates pass, nothing moves until a person approves.
    await bus.publish(evaluation(1, 40.0, 0.3), event_id="eval:demo:1")
    asked = await next_event(sub)  # automations (a chat bot, a release tool) hear that a person is needed
    assert asked.type == "model.approval_requested" and asked.payload["model"]["version"] == 1
    assert "perplexity" in asked.payload["reason"] and asked.payload["champion"] is None
    moved = await next_event(sub)
    assert moved.type == "model.alias_changed" and moved.payload["alias"] == "candidate"
    assert (await asyncio.to_thread(models_show, "demo@candidate", url))["version"] == 1
    async with httpx.AsyncClient(base_url=url) as client:
        audit = (await client.get("/v1/audit", params={"model": "demo"})).json()
    evaluated = next(a for a in audit if a["action"] == "evaluate")
    assert "awaiting promotion" in evaluated["reason"] and evaluated["details"]["decision"]["promote"] is True
    with pytest.raises(nats.errors.TimeoutError):
        await sub.fetch(1, timeout=1.0)  # no model.promoted
    with pytest.raises(RegistryError, match="404"):
        await asyncio.to_thread(models_show, "demo@champion", url)

    with pytest.raises(RegistryError, match="expected NAME:VERSION or NAME@ALIAS"):
        await asyncio.to_thread(models_promote_ref, "demo", "", url)
    await asyncio.to_thread(models_promote_ref, "demo@candidate", "approved by the release manager", url)
    promoted = await next_event(sub)
    assert promoted.type == "model.promoted" and promoted.payload["model"]["version"] == 1
    assert promoted.payload["reason"] == "approved by the release manager"
    await asyncio.to_thread(models_promote, "demo", 2, "try v2", url)
    assert (await next_event(sub)).payload["previous"] == {"model_name": "demo", "version": 1}

    # Deployment handshake: v2 fails to deploy -> the alias moves back to v1 and says so.
    await bus.publish(
        DeploymentFailed(model=ModelRef(model_name="demo", version=2), instance="gw-0", error="OOM"),
        event_id="deploy-failed:demo:2:gw-0",
    )
    back = await next_event(sub)
    assert back.type == "model.promoted" and back.payload["model"]["version"] == 1
    assert "deployment of version 2 failed on gw-0: OOM" in back.payload["reason"]
    shown = await asyncio.to_thread(models_show, "demo:2", url)
    assert shown["status"] == "rejected" and shown["deployments"][0]["state"] == "failed"

    # Tags through the REST API and the CLI functions; bad input is a clear 4xx.
    out = await asyncio.to_thread(models_tag, "demo:1", {"approved_by": "rm"}, [], "release", url)
    assert out == {"tags": {"approved_by": "rm"}}
    out = await asyncio.to_thread(models_tag, "demo", {"owner": "nlp"}, [], "", url)
    assert out["tags"] == {"owner": "nlp"}
    assert (await asyncio.to_thread(models_list, url))[0]["tags"] == {"owner": "nlp"}
    with pytest.raises(RegistryError, match="400: invalid tag key"):
        await asyncio.to_thread(models_tag, "demo:1", {"bad key": "x"}, [], "", url)
    with pytest.raises(RegistryError, match="404"):
        await asyncio.to_thread(models_tag, "demo:1", {}, ["absent"], "", url)


async def test_unpublished_outbox_is_relayed_at_start_up(tmp_path: Path) -> None:
    from services.model_registry.core.database import make_engine, migrate
    from services.model_registry.core.registry import Registry

    settings = RegistrySettings(
        home=tmp_path, registry_grpc_port=free_port(), registry_http_port=free_port(), log_json=False
    )
    engine = make_engine(settings.registry_database_url)
    migrate(engine)
    Registry(engine).register_version("early", ArtifactRef(uri="file:///x", sha256="a" * 64, size_bytes=1))
    engine.dispose()  # committed while no bus was up: the row waits in the outbox
    with NatsServer(tmp_path / "nats") as server:
        settings.nats_url = server.url
        service = create_service(settings)
        task = asyncio.create_task(service.run())
        nc = await nats.connect(server.url)
        try:
            for _ in range(100):  # the stream exists once the service's bus is up
                with contextlib.suppress(Exception):
                    sub = await nc.jetstream().pull_subscribe("puyu.events.model.>", stream="PUYU_EVENTS")
                    break
                await asyncio.sleep(0.1)
            assert (await next_event(sub)).id == "registered:early:1"
        finally:
            await nc.close()
            service.stop()
            await asyncio.wait_for(task, 30)


async def test_forged_checkpoints_are_refused_with_the_reason(stack: dict[str, Any]) -> None:
    """A checkpoint.ready naming a folder outside the artifact store, and one from a service that does
    not own checkpoints, are dead-lettered with the reason; neither registers a version."""
    bus, sub = stack["bus"], stack["sub"]
    failures = await stack["nc"].jetstream().pull_subscribe("puyu.events.job.failed", stream="PUYU_EVENTS")
    outside = ckpt("r9", 9).model_copy(
        update={
            "checkpoint": ArtifactRef(uri="file:///etc/../home/attacker/model", sha256="9" * 64, size_bytes=1)
        }
    )
    await bus.publish(outside, event_id="ckpt:r9:100")
    failed = await next_event(failures)
    assert failed.payload["error"] == (
        "rejected: artifact file:///etc/../home/attacker/model is outside the artifact store file:///ckpt: "
        "only what the store holds is registered"
    )
    stranger = Bus(stack["url"], "agent-runtime")
    await stranger.start()
    try:
        await stranger.publish(ckpt("r8", 8), event_id="ckpt:r8:100")
    finally:
        await stranger.stop()
    failed = await next_event(failures)
    assert "comes from 'agent-runtime'; only trainer, finetuner may publish it" in failed.payload["error"]
    # neither forgery took a version number: the trainer's own checkpoint is version 1
    await bus.publish(ckpt("r8", 8), event_id="ckpt:r8:100:trainer")
    registered = await next_event(sub)
    assert registered.id == "registered:demo:1" and registered.payload["artifact"]["uri"] == "file:///ckpt/r8"
