"""The trainer service against a real nats-server: jobs in, checkpoints out, bad jobs dead-lettered."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import grpc
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from contracts.events import (
    CheckpointReady,
    CorpusDeduplicated,
    DatasetRef,
    JobFailed,
    ModelArchitecture,
    PipelineSpec,
    TrainRequested,
    TrainSpec,
)
from contracts.proto.puyu.jobs.v1 import jobs_pb2, jobs_pb2_grpc
from services.trainer.app import create_service
from services.trainer.config import TrainerSettings
from shared.artifacts import local_path
from shared.bus import Bus, HandlerContext
from shared.natsserver import NatsServer, free_port
from shared.ports import SERVICES

pytestmark = pytest.mark.integration
torch.set_num_threads(2)

SPEC = TrainSpec(
    architecture=ModelArchitecture(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        vocab_size=300,
    ),
    seq_len=32,
    micro_batch_size=8,
    max_steps=15,
    warmup_steps=2,
    learning_rate=1e-2,
    num_threads=2,
)


def write_dataset(root: Path) -> DatasetRef:
    """Under HOME/data: a folder the trainer may read."""
    root.mkdir(parents=True)
    docs = [f"The capital of Country{i % 7} is City{i % 7}. It is known for its salt." for i in range(80)]
    (root / "shard-0.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    manifest = {
        "dataset_id": "ds",
        "documents": 1,
        "shards": [{"path": (root / "shard-0.jsonl").as_uri(), "sha256": "0"}],
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    return DatasetRef(dataset_id=root.name, manifest_uri=(root / "manifest.json").as_uri(), digest="d")


async def test_train_job_to_checkpoint_ready(tmp_path: Path) -> None:
    with NatsServer(tmp_path / "nats") as nats:
        settings = TrainerSettings(
            nats_url=nats.url,
            home=tmp_path / "home",
            log_json=False,
            grpc_port_base=free_port() - 1 - SERVICES.index("trainer"),
            http_port_base=free_port() - 1 - SERVICES.index("trainer"),
        )
        service = create_service(settings)
        running = asyncio.create_task(service.run())
        observer = Bus(nats.url, "test-observer")
        ready: asyncio.Queue[CheckpointReady] = asyncio.Queue()
        failed: asyncio.Queue[JobFailed] = asyncio.Queue()

        @observer.handle(CheckpointReady)
        async def on_ckpt(ctx: HandlerContext[CheckpointReady]) -> None:
            await ready.put(ctx.payload)

        @observer.handle(JobFailed)
        async def on_failed(ctx: HandlerContext[JobFailed]) -> None:
            await failed.put(ctx.payload)

        # Start one after the other: concurrent first starts on a fresh server race to create the streams.
        while not service.runtime.bus.started:  # noqa: ASYNC110 - the runtime offers no started event
            await asyncio.sleep(0.05)
        await observer.start()
        try:
            dataset = write_dataset(tmp_path / "home" / "data" / "ds-1")
            await observer.publish(TrainRequested(job_id="job-1", datasets=[dataset], spec=SPEC))
            event = await asyncio.wait_for(ready.get(), 120)
            assert event.job_id == "job-1" and event.final and event.step == 15
            assert event.run_id == "pretrain-job-1" and event.datasets == [dataset]
            assert event.hyperparameters["max_steps"] == 15
            assert event.metrics["loss"] > 0 and event.metrics["tokens_per_s"] > 0
            ckpt = local_path(event.checkpoint.uri)
            assert ckpt is not None and ckpt.as_posix().endswith("runs/pretrain-job-1/checkpoints/step-15")
            model, tok = AutoModelForCausalLM.from_pretrained(ckpt), AutoTokenizer.from_pretrained(ckpt)
            ids = tok("The capital of Country3 is", return_tensors="pt")
            assert model.generate(**ids, max_new_tokens=3, do_sample=False).shape[1] > ids.input_ids.shape[1]
            status = await observer.jobs.get("job-1")  # final before the final checkpoint went out
            assert status is not None and status.state == "succeeded"
            assert status.result["checkpoint"]["uri"] == event.checkpoint.uri

            # Event-driven: a deduplicated corpus carrying a train spec starts a run by itself.
            ds2 = write_dataset(tmp_path / "home" / "data" / "ds-2")
            await observer.publish(
                CorpusDeduplicated(
                    job_id="dedup-2",
                    source=ds2,
                    dataset=ds2,
                    documents_in=80,
                    documents_out=80,
                    exact_duplicates=0,
                    near_duplicates=0,
                    pipeline=PipelineSpec(train=SPEC.model_copy(update={"max_steps": 3, "warmup_steps": 1})),
                )
            )
            event2 = await asyncio.wait_for(ready.get(), 120)
            assert event2.job_id == "train-ds-2" and event2.step == 3

            # gRPC Jobs: bad requests are INVALID_ARGUMENT; Get reads the board.
            async with grpc.aio.insecure_channel(f"127.0.0.1:{service.runtime.grpc_port}") as channel:
                stub = jobs_pb2_grpc.JobsStub(channel)
                got = await stub.Get(jobs_pb2.GetJobRequest(job_id="job-1"))
                assert got.state == "succeeded" and json.loads(got.result_json)["step"] == 15
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.Submit(
                        jobs_pb2.SubmitJobRequest(
                            kind="train",
                            spec_json=json.dumps(
                                {"datasets": [dataset.model_dump()], "spec": {"seq_len": 4096}}
                            ),
                        )
                    )
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert "max_position_embeddings" in (err.value.details() or "")
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.Get(jobs_pb2.GetJobRequest(job_id="nope"))
                assert err.value.code() == grpc.StatusCode.NOT_FOUND

                # A dataset that does not exist is rejected at once (dead letter + job.failed).
                missing = DatasetRef(
                    dataset_id="gone",
                    manifest_uri=(tmp_path / "home" / "data" / "gone.json").as_uri(),
                    digest="x",
                )
                submitted = await stub.Submit(
                    jobs_pb2.SubmitJobRequest(
                        kind="train",
                        spec_json=json.dumps(
                            {
                                "job_id": "job-bad",
                                "datasets": [missing.model_dump()],
                                "spec": SPEC.model_dump(),
                            }
                        ),
                    )
                )
                assert submitted.state == "queued"
                fail = await asyncio.wait_for(failed.get(), 60)
                assert fail.job_id == "job-bad" and "not found" in fail.error and fail.attempts == 1
                states = [s.state async for s in stub.Watch(jobs_pb2.GetJobRequest(job_id="job-bad"))]
                assert states[-1] == "failed"
        finally:
            await observer.stop()
            service.stop()
            await asyncio.wait_for(running, 30)
