"""Cancelling a running train job over the bus: it stops at a step boundary, keeps its state, and
the job board says cancelled (no retry, no dead letter)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import torch

from contracts.events import DatasetRef, JobProgress, ModelArchitecture, TrainRequested, TrainSpec
from contracts.events.training import TrainCancelRequested
from services.trainer.app import create_service
from services.trainer.config import TrainerSettings
from shared.bus import Bus, HandlerContext
from shared.natsserver import NatsServer, free_port
from shared.ports import SERVICES

pytestmark = pytest.mark.integration
torch.set_num_threads(2)


@pytest.mark.slow
async def test_cancel_stops_a_running_job(tmp_path: Path) -> None:
    root = tmp_path / "home" / "data" / "ds"  # under a data root the trainer may read
    root.mkdir(parents=True)
    (root / "shard.jsonl").write_text(
        "".join(json.dumps({"text": f"Doc {i} about salt."}) + "\n" for i in range(50))
    )
    (root / "manifest.json").write_text(
        json.dumps({"dataset_id": "ds", "documents": 50, "shards": [{"path": "shard.jsonl", "sha256": "0"}]})
    )
    dataset = DatasetRef(dataset_id="ds", manifest_uri=(root / "manifest.json").as_uri(), digest="d")
    spec = TrainSpec(
        architecture=ModelArchitecture(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
            vocab_size=300,
        ),
        seq_len=32,
        micro_batch_size=2,
        max_steps=100_000,  # would run for hours: only the cancel ends it
        warmup_steps=2,
        num_threads=1,
    )
    with NatsServer(tmp_path / "nats") as nats:
        base = free_port() - 1 - SERVICES.index("trainer")
        settings = TrainerSettings(
            nats_url=nats.url,
            home=tmp_path / "home",
            log_json=False,
            grpc_port_base=base,
            http_port_base=free_port() - 1 - SERVICES.index("trainer"),
            trainer_progress_interval=0.1,
        )
        service = create_service(settings)
        running = asyncio.create_task(service.run())
        observer = Bus(nats.url, "test-observer")
        training: asyncio.Event = asyncio.Event()

        @observer.handle(JobProgress)
        async def on_progress(ctx: HandlerContext[JobProgress]) -> None:
            if ctx.payload.job_id == "long" and ctx.payload.stage == "train" and "mfu" in ctx.payload.metrics:
                training.set()

        while not service.runtime.bus.started:  # noqa: ASYNC110 - the runtime offers no started event
            await asyncio.sleep(0.05)
        await observer.start()
        try:
            await observer.publish(TrainRequested(job_id="long", datasets=[dataset], spec=spec))
            await asyncio.wait_for(training.wait(), 120)
            await observer.publish(TrainCancelRequested(job_id="long", reason="changed my mind"))
            deadline = asyncio.get_running_loop().time() + 60
            states: list[Path] = []
            while asyncio.get_running_loop().time() < deadline and not states:
                states = list((tmp_path / "home").rglob("state/latest.json"))  # saved as the run stops
                await asyncio.sleep(0.2)
            assert states, "the cancelled run keeps its state to resume from"
            step = json.loads(states[0].read_text())["step"]
            assert 0 < step < 100_000
            await asyncio.sleep(1.0)
            final = await observer.jobs.get("long")
            assert final is not None and final.state == "cancelled"  # no late "running" overwrote it
        finally:
            await observer.stop()
            service.stop()
            await asyncio.wait_for(running, 30)
