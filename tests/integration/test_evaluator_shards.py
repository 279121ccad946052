"""A sharded run on a real nats-server: two evaluator replicas take the shards of one request; the
assembled scores equal an unsharded run's; a repeated request finds every shard done."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch

from contracts.events import EvaluateRequested, EvaluationCompleted, JobFailed, ModelRef
from services.evaluator.app import create_service
from services.evaluator.config import EvaluatorSettings
from services.evaluator.core import evaluate_model
from shared import samples
from shared.artifacts import ArtifactStore
from shared.bus import Bus, HandlerContext
from shared.natsserver import NatsServer, free_port
from tests.support.tiny_model import build_tiny_model

pytestmark = pytest.mark.integration
torch.set_num_threads(1)


async def test_two_replicas_share_the_shards_of_a_run(tmp_path: Path) -> None:
    with NatsServer(tmp_path / "nats") as nats:
        store = ArtifactStore((tmp_path / "artifacts").as_uri())
        staging = store.local_staging("models/shard/v1")
        build_tiny_model(staging, samples.heldout_texts(100), vocab_size=300)
        artifact = store.put_dir(staging, "models/shard/v1")

        def settings(n: int) -> EvaluatorSettings:
            return EvaluatorSettings(
                home=tmp_path / f"home{n}",
                nats_url=nats.url,
                artifact_root=store.root_uri,
                log_json=False,
                grpc_port_base=free_port() - 5,
                http_port_base=free_port() - 5,
                evaluator_limit=6,
                evaluator_batch_size=4,
                evaluator_num_threads=1,
                evaluator_data_dir=tmp_path / "nodata",
                evaluator_shard_size=2,
                evaluator_dtype="float32",  # shards and the whole run batch differently: compared in fp32
            )

        replicas = [create_service(settings(n)) for n in (1, 2)]
        running = [asyncio.create_task(r.run()) for r in replicas]
        seen: asyncio.Queue[tuple[str, object]] = asyncio.Queue()
        tester = Bus(nats.url, "tester")

        @tester.handle(EvaluationCompleted)
        async def on_completed(ctx: HandlerContext[EvaluationCompleted]) -> None:
            await seen.put((ctx.envelope.id, ctx.payload))

        @tester.handle(JobFailed)
        async def on_failed(ctx: HandlerContext[JobFailed]) -> None:
            await seen.put((ctx.envelope.id, ctx.payload))

        await tester.start()
        try:
            model = ModelRef(model_name="shard", version=1)
            tasks = ["perplexity", "demo_facts"]
            await tester.publish(EvaluateRequested(job_id="j1", model=model, artifact=artifact, tasks=tasks))
            _, done = await asyncio.wait_for(seen.get(), 120)
            assert isinstance(done, EvaluationCompleted), done
            shard_files = sorted(
                (tmp_path / "artifacts" / "evals" / "shard" / "v1" / "shards").rglob("*.jsonl")
            )
            assert len(shard_files) == 6  # 2 tasks x 6 samples / 2 per shard
            whole = evaluate_model(
                Path(store.fetch(artifact.uri)),
                tasks,
                limit=6,
                batch_size=4,
                dtype="float32",
                data_root=tmp_path / "nodata",
            )
            for result in done.results:
                expected = whole.summary()[result.task]
                assert result.num_samples == 6
                for metric, value in expected.items():
                    assert result.metrics[metric] == pytest.approx(value, rel=1e-4), (result.task, metric)
            status = await tester.jobs.get("j1")  # written before the event went out
            assert status is not None and status.state == "succeeded"

            # the same run again: every shard is found done, nothing is re-published
            mtimes = [f.stat().st_mtime_ns for f in shard_files]
            await tester.publish(EvaluateRequested(job_id="j2", model=model, artifact=artifact, tasks=tasks))
            _, again = await asyncio.wait_for(seen.get(), 60)
            assert isinstance(again, EvaluationCompleted)
            assert [r.metrics for r in again.results] == [r.metrics for r in done.results]
            assert [f.stat().st_mtime_ns for f in shard_files] == mtimes
        finally:
            await tester.stop()
            for r in replicas:
                r.stop()
            await asyncio.wait_for(asyncio.gather(*running), 30)
