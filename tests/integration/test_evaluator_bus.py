"""The evaluator service on a real nats-server: ModelRegistered -> EvaluationCompleted, bad requests
dead-lettered with a job.failed naming the problem, and the gRPC Jobs API for kind 'evaluate'."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import grpc
import pytest
import torch

from contracts.events import EvaluationCompleted, JobFailed, ModelRef, ModelRegistered
from contracts.proto.puyu.jobs.v1 import jobs_pb2, jobs_pb2_grpc
from services.evaluator.app import create_service
from services.evaluator.config import EvaluatorSettings
from shared import samples
from shared.artifacts import ArtifactStore
from shared.bus import Bus, HandlerContext
from shared.natsserver import NatsServer, free_port
from tests.support.tiny_model import build_tiny_model

pytestmark = pytest.mark.integration
torch.set_num_threads(1)


async def test_evaluator_service_end_to_end(tmp_path: Path) -> None:
    with NatsServer(tmp_path / "nats") as nats:
        store = ArtifactStore((tmp_path / "artifacts").as_uri())
        staging = store.local_staging("models/demo/v1")
        build_tiny_model(staging, samples.heldout_texts(100), vocab_size=300)
        artifact = store.put_dir(staging, "models/demo/v1")

        grpc_port = free_port()
        settings = EvaluatorSettings(
            home=tmp_path / "home",
            nats_url=nats.url,
            artifact_root=store.root_uri,
            log_json=False,
            grpc_port_base=grpc_port - 5,
            http_port_base=free_port() - 5,  # evaluator is offset 5
            evaluator_limit=4,
            evaluator_batch_size=4,
            evaluator_num_threads=1,
            evaluator_data_dir=tmp_path / "nodata",
        )
        runtime = create_service(settings).runtime
        assert runtime.grpc_port == grpc_port
        service = asyncio.create_task(runtime.run())

        seen: asyncio.Queue[tuple[str, object]] = asyncio.Queue()
        tester = Bus(nats.url, "model-registry")  # model.registered is taken only from the registry

        @tester.handle(EvaluationCompleted)
        async def on_completed(ctx: HandlerContext[EvaluationCompleted]) -> None:
            await seen.put((ctx.envelope.id, ctx.payload))

        @tester.handle(JobFailed)
        async def on_failed(ctx: HandlerContext[JobFailed]) -> None:
            await seen.put((ctx.envelope.id, ctx.payload))

        await tester.start()
        try:
            model = ModelRef(model_name="demo", version=1)
            await tester.publish(
                ModelRegistered(model=model, artifact=artifact, run_id="r1"), correlation="c-1"
            )
            event_id, done = await asyncio.wait_for(seen.get(), 90)
            assert event_id == "eval:demo:1" and isinstance(done, EvaluationCompleted)
            by_task = {r.task: r for r in done.results}
            assert set(by_task) == {"perplexity", "demo_facts"}
            assert by_task["perplexity"].higher_is_better is False and by_task["perplexity"].num_samples == 4
            assert (
                by_task["perplexity"].metrics["perplexity"] > 1
                and len(by_task["demo_facts"].version_hash) == 64
            )
            assert done.details_uri == store.uri("evals/demo/v1")
            summary = store.read_json(f"{done.details_uri}/summary.json")
            assert set(summary) == {"perplexity", "demo_facts"}
            assert (Path(store.fetch(done.details_uri)) / "details" / "demo_facts.jsonl").exists()

            for _ in range(50):  # the registration's evaluation is on the job board too
                job = await tester.jobs.get("eval-demo-v1")
                if job is not None and job.state == "succeeded":
                    break
                await asyncio.sleep(0.1)
            assert (
                job is not None and job.state == "succeeded" and job.result["details_uri"] == done.details_uri
            )

            # an unknown task can never succeed: dead-lettered at once, job.failed names it
            bad = ModelRegistered(
                model=ModelRef(model_name="demo", version=2),
                artifact=artifact,
                run_id="r2",
                tasks=["perplexity", "no_such_task"],
            )
            await tester.publish(bad)
            _, failed = await asyncio.wait_for(seen.get(), 30)
            assert isinstance(failed, JobFailed) and "no_such_task" in failed.error and failed.attempts == 1

            # the gRPC Jobs API: submit, watch to the end, get
            async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
                stub = jobs_pb2_grpc.JobsStub(channel)
                spec = {
                    "model": {"model_name": "demo", "version": 1},
                    "artifact": artifact.model_dump(),
                    "tasks": ["demo_facts"],
                }
                status = await stub.Submit(
                    jobs_pb2.SubmitJobRequest(kind="evaluate", spec_json=json.dumps(spec))
                )
                assert status.state == "queued" and status.job_id
                states = [s.state async for s in stub.Watch(jobs_pb2.GetJobRequest(job_id=status.job_id))]
                assert states[-1] == "succeeded"
                final = await stub.Get(jobs_pb2.GetJobRequest(job_id=status.job_id))
                assert "demo_facts" in json.loads(final.result_json)["summary"]
                event_id, again = await asyncio.wait_for(seen.get(), 30)
                assert event_id == f"eval:demo:1:{status.job_id}" and isinstance(again, EvaluationCompleted)

                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.Submit(jobs_pb2.SubmitJobRequest(kind="train", spec_json="{}"))
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.Submit(
                        jobs_pb2.SubmitJobRequest(
                            kind="evaluate", spec_json=json.dumps({**spec, "tasks": ["nope"]})
                        )
                    )
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "nope" in err.value.details()
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.Get(jobs_pb2.GetJobRequest(job_id="missing"))
                assert err.value.code() == grpc.StatusCode.NOT_FOUND
        finally:
            await tester.stop()
            runtime.stop()
            await asyncio.wait_for(service, 30)
