"""FinetuneRequested -> CheckpointReady through a real nats-server, with the base resolved from a registry."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import nats
import pytest
import torch
from transformers import AutoModelForCausalLM

from contracts.events import (
    CheckpointReady,
    EventEnvelope,
    FinetuneRequested,
    FinetuneSpec,
    JobFailed,
    ModelRef,
)
from contracts.proto.puyu.jobs.v1 import jobs_pb2, jobs_pb2_grpc
from contracts.proto.puyu.registry.v1 import registry_pb2, registry_pb2_grpc
from services.finetuner.app import create_service
from services.finetuner.config import FinetunerSettings
from shared.artifacts import ArtifactStore
from shared.natsserver import NatsServer, free_port
from shared.samples import CHAT_TEMPLATE, chat_examples, heldout_texts
from tests.support.data import write_chat_dataset
from tests.support.tiny_model import build_tiny_model

pytestmark = pytest.mark.integration
torch.set_num_threads(2)


class _Registry(registry_pb2_grpc.ModelRegistryServicer):
    """Stands in for the model registry: one known version."""

    def __init__(self, artifact: registry_pb2.Artifact) -> None:
        self.artifact = artifact

    async def GetVersion(self, request: Any, context: grpc.aio.ServicerContext) -> registry_pb2.ModelVersion:
        if (request.model_name, request.version) != ("tiny", 1):
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"no version {request.model_name}:{request.version}"
            )
        return registry_pb2.ModelVersion(model_name="tiny", version=1, artifact=self.artifact)


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    texts = list(heldout_texts(150)) + [m["content"] for r in chat_examples(60) for m in r["messages"]]  # type: ignore[attr-defined]
    store = ArtifactStore((tmp_path / "artifacts").as_uri())
    base_dir = build_tiny_model(
        store.local_staging("models/tiny/1"),
        texts,
        chat_template=CHAT_TEMPLATE,
        unk_token="<unk>",
        max_positions=512,
    )
    base_ref = store.ref_for(base_dir.as_uri())

    registry = grpc.aio.server()
    registry_pb2_grpc.add_ModelRegistryServicer_to_server(
        _Registry(
            registry_pb2.Artifact(uri=base_ref.uri, sha256=base_ref.sha256, size_bytes=base_ref.size_bytes)
        ),
        registry,
    )
    registry_port = registry.add_insecure_port("127.0.0.1:0")
    await registry.start()

    server = NatsServer(tmp_path / "nats").start()
    grpc_port, http_port = free_port(), free_port()
    settings = FinetunerSettings(
        home=tmp_path / "home",
        nats_url=server.url,
        artifact_root=store.root_uri,
        registry_grpc=f"127.0.0.1:{registry_port}",
        finetuner_device="cpu",
        finetuner_num_threads=2,
        grpc_port_base=grpc_port - 4,
        http_port_base=http_port - 4,
        log_json=False,
    )
    service = create_service(settings)
    task = asyncio.create_task(service.run())
    for _ in range(100):
        if service.runtime.bus.started:
            break
        await asyncio.sleep(0.1)
    nc = await nats.connect(server.url)
    try:
        yield {
            "runtime": service.runtime,
            "core": service.core,
            "nc": nc,
            "grpc": f"127.0.0.1:{grpc_port}",
            "store": store,
            "data": write_chat_dataset(tmp_path / "home" / "data" / "chat.jsonl", n=48),  # a read root
            "tmp": tmp_path,
        }
    finally:
        await nc.close()
        service.stop()
        await asyncio.wait_for(task, 30)
        await registry.stop(None)
        server.stop()


async def _next_event(sub: Any, cls: type, timeout: float = 120) -> Any:
    msg = await sub.next_msg(timeout=timeout)
    return EventEnvelope.from_bytes(msg.data).payload_as(cls)


async def test_submit_over_grpc_produces_checkpoint(stack: dict[str, Any]) -> None:
    js = stack["nc"].jetstream()
    ckpts = await js.subscribe(CheckpointReady.subject(), stream="PUYU_EVENTS")
    request = FinetuneRequested(
        job_id="ft-job-1",
        base=ModelRef(model_name="tiny", version=1),
        dataset_uri=str(stack["data"]),
        output_model_name="tiny-chat",
        spec=FinetuneSpec(max_steps=12, micro_batch_size=4, seq_len=64),
    )
    async with grpc.aio.insecure_channel(stack["grpc"]) as channel:
        jobs = jobs_pb2_grpc.JobsStub(channel)
        status = await jobs.Submit(
            jobs_pb2.SubmitJobRequest(
                kind="finetune", spec_json=request.model_dump_json(), correlation_id="corr-1"
            )
        )
        assert status.state == "queued" and status.job_id == "ft-job-1"
        states = [s.state async for s in jobs.Watch(jobs_pb2.GetJobRequest(job_id="ft-job-1"), timeout=180)]
        assert states[-1] == "succeeded", states
        final = await jobs.Get(jobs_pb2.GetJobRequest(job_id="ft-job-1"))
        qlora = request.model_copy(update={"spec": request.spec.model_copy(update={"method": "qlora"})})
        for kind, spec in (("train", "{}"), ("finetune", qlora.model_dump_json())):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await jobs.Submit(jobs_pb2.SubmitJobRequest(kind=kind, spec_json=spec))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "QLoRA needs a CUDA GPU" in str(err.value.details())

    msg = await ckpts.next_msg(timeout=30)
    env = EventEnvelope.from_bytes(msg.data)
    ckpt = env.payload_as(CheckpointReady)
    assert env.id == "ckpt:ft-ft-job-1:12" and env.correlation_id == "corr-1"
    assert ckpt.kind_of_run == "finetune" and ckpt.method == "lora" and ckpt.model_name == "tiny-chat"
    assert ckpt.parent == ModelRef(model_name="tiny", version=1)
    assert ckpt.adapter is not None and ckpt.metrics["loss"] > 0
    assert ckpt.checkpoint.uri.endswith("runs/ft-ft-job-1/model")
    assert json.loads(final.result_json)["checkpoint"] == ckpt.checkpoint.uri
    # the artifact is what the event says it is, and transformers loads it as is
    assert stack["store"].ref_for(ckpt.checkpoint.uri) == ckpt.checkpoint
    AutoModelForCausalLM.from_pretrained(stack["store"].fetch(ckpt.checkpoint.uri))
    lineage = json.loads((stack["store"].fetch(ckpt.checkpoint.uri) / "lineage.json").read_text())
    assert lineage["base"]["model_name"] == "tiny" and lineage["base"]["sha256"]


async def test_unknown_model_is_rejected(stack: dict[str, Any]) -> None:
    js = stack["nc"].jetstream()
    failed = await js.subscribe(JobFailed.subject(), stream="PUYU_EVENTS")
    bus = stack["runtime"].bus
    await bus.publish(
        FinetuneRequested(
            job_id="ft-bad", base=ModelRef(model_name="ghost", version=3), dataset_uri=str(stack["data"])
        )
    )
    event = await _next_event(failed, JobFailed, timeout=60)
    assert event.job_id == "ft-bad" and "unknown model ghost version 3" in event.error
    assert event.attempts == 1  # rejected at once, no retries
    for _ in range(50):  # the board is updated just after the job.failed event
        status = await bus.jobs.get("ft-bad")
        if status is not None and status.state == "failed":
            break
        await asyncio.sleep(0.1)
    assert status is not None and status.state == "failed" and "unknown model" in status.message


async def test_a_bug_in_the_core_is_retried_then_dead_lettered(
    stack: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    def bug(*args: Any, **kwargs: Any) -> None:
        raise ValueError("a bug, not a bad request")

    monkeypatch.setattr(stack["core"], "finetune", bug)
    js = stack["nc"].jetstream()
    failed = await js.subscribe(JobFailed.subject(), stream="PUYU_EVENTS")
    await stack["runtime"].bus.publish(
        FinetuneRequested(
            job_id="ft-bug", base=ModelRef(model_name="tiny", version=1), dataset_uri=str(stack["data"])
        )
    )
    event = await _next_event(failed, JobFailed, timeout=60)
    assert event.job_id == "ft-bug" and "a bug, not a bad request" in event.error
    assert event.attempts == FinetunerSettings().finetuner_max_deliver  # retried, never rejected
