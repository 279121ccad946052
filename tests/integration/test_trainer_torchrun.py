"""The trainer as a controller with PUYU_LAUNCHER=torchrun: real trainer and registry processes on a
secured nats-server, each run two torchrun ranks (DDP over gloo).

A finished run is announced by exactly one checkpoint.ready (counted on the wire, every publish) and
registered exactly once; a cancelled run stops every rank, keeps its state and leaves no process.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import nats
import psutil
import pytest

from contracts.events import CheckpointReady, DatasetRef, JobProgress, ModelRegistered, TrainRequested
from contracts.events.envelope import EventEnvelope
from contracts.events.training import TrainCancelRequested
from services.cli.chain import ChainWatcher
from services.cli.stack import Stack
from shared.bus import Bus
from shared.bus.identity import NatsIdentity
from shared.ports import http_port
from tests.support.jobs import wait_for_job_state
from tests.support.trainer_specs import micro_spec

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]


def write_dataset(root: Path) -> DatasetRef:
    root.mkdir(parents=True)
    docs = [f"The capital of Country{i % 7} is City{i % 7}. It is known for its salt." for i in range(80)]
    (root / "shard-0.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    manifest = {
        "dataset_id": root.name,
        "documents": len(docs),
        "shards": [{"path": "shard-0.jsonl", "sha256": "0"}],
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    return DatasetRef(dataset_id=root.name, manifest_uri=(root / "manifest.json").as_uri(), digest="d")


class WireCounter:
    """Every checkpoint.ready message published (a core subscription: JetStream's dedup hides none)."""

    def __init__(self, url: str) -> None:
        self.url, self.seen, self.nc = url, [], None  # type: ignore[var-annotated]

    async def __aenter__(self) -> WireCounter:
        self.nc = await nats.connect(self.url, **NatsIdentity.from_env().connect_options())

        async def on_msg(msg: nats.aio.msg.Msg) -> None:
            env = EventEnvelope.from_bytes(msg.data)
            if env.type == CheckpointReady.event_type:
                self.seen.append(env)

        await self.nc.subscribe(CheckpointReady.subject(), cb=on_msg)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.nc.drain()  # type: ignore[attr-defined]


def test_torchrun_runs_end_in_one_version_and_cancel_leaves_nothing(
    service_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    stack = service_stack(
        ("trainer", "model_registry"),
        PUYU_LAUNCHER="torchrun",
        PUYU_LAUNCH_NPROCS_PER_NODE="2",
        PUYU_LAUNCH_GRACE_SECONDS="20",
        PUYU_LAUNCH_POLL_SECONDS="0.2",
    )
    home = stack.settings.home
    uri = asyncio.run(_finished_run(stack, write_dataset(home / "data" / "ds")))
    run_dir = home / "artifacts" / "runs" / "pretrain-ddp-1"
    assert json.loads((run_dir / "handle.json").read_text())["launcher"] == "torchrun"
    assert "--nproc-per-node=2" in (run_dir / "logs" / "torchrun.log").read_text()
    registry = f"http://{stack.settings.host}:{http_port('model_registry', stack.settings)}"
    shown = httpx.get(
        f"{registry}/v1/models/tiny-ddp", timeout=30, headers=stack.client_auth().headers()
    ).json()
    assert [v["version"] for v in shown["versions"]] == [1]  # registered once
    assert shown["versions"][0]["artifact"]["uri"] == uri
    asyncio.run(_cancelled_run(stack, home / "data" / "ds"))


async def _finished_run(stack: Stack, dataset: DatasetRef) -> str:
    correlation = uuid.uuid4().hex
    spec = micro_spec(max_steps=12, warmup_steps=2, num_threads=1, model_name="tiny-ddp")
    bus = Bus(stack.settings.nats_url, "torchrun-test")
    await bus.start()
    try:
        async with (
            WireCounter(stack.settings.nats_url) as wire,
            ChainWatcher(stack.settings.nats_url, correlation) as watcher,
        ):
            await bus.publish(
                TrainRequested(job_id="ddp-1", datasets=[dataset], spec=spec), correlation=correlation
            )
            registered = await watcher.wait_for(ModelRegistered.event_type, timeout=600)
            status = await wait_for_job_state(bus, "ddp-1", "succeeded", timeout=120)
            await asyncio.sleep(2.0)  # a late duplicate would arrive by now
            assert len(wire.seen) == 1, [e.id for e in wire.seen]
            ready = wire.seen[0].payload_as(CheckpointReady)
            assert ready.final and ready.step == 12 and ready.run_id == "pretrain-ddp-1"
            assert wire.seen[0].id == "ckpt:pretrain-ddp-1:12"
            # Both ranks trained: tokens counted over the world exceed what one rank can see.
            assert ready.metrics["tokens_seen"] > 12 * spec.micro_batch_size * spec.seq_len
            assert status.result["checkpoint"]["uri"] == ready.checkpoint.uri
            assert registered.payload["model"]["model_name"] == "tiny-ddp"
    finally:
        await bus.stop()

    return ready.checkpoint.uri


async def _cancelled_run(stack: Stack, data: Path) -> None:
    dataset = DatasetRef(dataset_id="ds", manifest_uri=(data / "manifest.json").as_uri(), digest="d")
    # Would run for hours: only the cancel ends it.
    spec = micro_spec(max_steps=100_000, warmup_steps=2, num_threads=1, micro_batch_size=2)
    bus = Bus(stack.settings.nats_url, "torchrun-cancel-test")
    await bus.start()
    run_dir = stack.settings.home / "artifacts" / "runs" / "pretrain-ddp-long"
    correlation = uuid.uuid4().hex
    try:
        async with ChainWatcher(stack.settings.nats_url, correlation) as watcher:
            request = TrainRequested(job_id="ddp-long", datasets=[dataset], spec=spec)
            await bus.publish(request, correlation=correlation)
            await watcher.wait_for(
                JobProgress.event_type,
                timeout=300,
                predicate=lambda e: e.payload["stage"] == "train" and "mfu" in e.payload["metrics"],
            )
        ranks = _ranks(run_dir)
        workers = [p for p in ranks if "torch.distributed.run" not in p.cmdline()]
        assert len(workers) == 2 and len(ranks) == 3, ranks  # torchrun and its two ranks
        await bus.publish(TrainCancelRequested(job_id="ddp-long", reason="changed my mind"))
        await wait_for_job_state(bus, "ddp-long", "cancelled", timeout=60)
        deadline = time.monotonic() + 60
        while _ranks(run_dir) and time.monotonic() < deadline:  # noqa: ASYNC110 - polling processes
            await asyncio.sleep(0.2)
        assert not _ranks(run_dir), "a rank outlived the cancel"
        assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in ranks)
        saved = json.loads((run_dir / "state" / "latest.json").read_text())["step"]
        assert 0 < saved < 100_000  # stopped at a step boundary with its state kept (SIGTERM, not SIGKILL)
        await asyncio.sleep(1.0)
        final = await bus.jobs.get("ddp-long")
        assert final is not None and final.state == "cancelled"
    finally:
        await bus.stop()


def _ranks(run_dir: Path) -> list[psutil.Process]:
    """torchrun and its workers: every process whose command line names the run folder."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if str(run_dir) in (p.info["cmdline"] or []) and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except psutil.Error:
            continue
    return found
