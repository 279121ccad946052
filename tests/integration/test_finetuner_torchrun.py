"""The finetuner as a controller of two-process torchrun runs, driven over the bus: the finetuner and
the model registry as processes on a real, secured nats-server (PUYU_LAUNCHER=torchrun,
PUYU_LAUNCH_NPROCS_PER_NODE=2).

A request ends in exactly one registered version, also when the same request comes again (the
controller takes the finished run's result and re-announces the same ``ckpt:{run}:{step}`` event,
which the stream and the registry keep once). A job cancelled on the job board stops both ranks.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from contracts.events import (
    CheckpointReady,
    FinetuneRequested,
    FinetuneSpec,
    JobProgress,
    ModelRef,
    ModelRegistered,
)
from services.cli.chain import ChainWatcher
from services.cli.stack import Stack
from shared.artifacts import ArtifactStore, local_path
from shared.bus import Bus
from shared.bus.jobs import JobStatus
from shared.ports import http_port
from shared.samples import CHAT_TEMPLATE, chat_examples, heldout_texts
from tests.support.data import write_chat_dataset
from tests.support.tiny_model import build_tiny_model

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]


def _request(job_id: str, base: Path, data: Path, store: ArtifactStore, steps: int) -> FinetuneRequested:
    return FinetuneRequested(
        job_id=job_id,
        base=ModelRef(model_name="tiny-base", version=1),
        base_artifact=store.ref_for(base.as_uri()),
        dataset_uri=data.as_uri(),
        output_model_name="tiny-ddp",
        spec=FinetuneSpec(max_steps=steps, micro_batch_size=2, seq_len=96),  # state saved at the end only
    )


async def _board_until(bus: Bus, job_id: str, done: Callable[[JobStatus], bool], timeout: float) -> JobStatus:
    deadline = time.monotonic() + timeout
    while True:
        status = await bus.jobs.get(job_id)
        if status is not None and done(status):
            return status
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id}: {status}")
        await asyncio.sleep(0.3)


def _ranks_of(run_dir: Path) -> list[psutil.Process]:
    """Live processes whose command line names the run folder (torchrun and its workers)."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if str(run_dir) in (p.info["cmdline"] or []) and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except psutil.Error:
            continue
    return found


async def _scenario(stack: Stack, base: Path, data: Path, store: ArtifactStore) -> dict[str, Any]:
    correlation = uuid.uuid4().hex
    bus = Bus(stack.settings.nats_url, "finetune-torchrun-test")
    await bus.start()
    out: dict[str, Any] = {}
    try:
        async with ChainWatcher(stack.settings.nats_url, correlation) as watcher:
            # 1. a two-rank finetune ends in one registered version ...
            done = _request(f"ddp-{correlation[:8]}", base, data, store, steps=6)
            await bus.publish(done, correlation=correlation)
            await watcher.wait_for(ModelRegistered.event_type, timeout=600)
            first = await _board_until(bus, done.job_id, lambda s: s.state == "succeeded", 60)
            # ... and the same request again is the same run, announced again under the same id
            again_at = time.time()
            await bus.publish(done, correlation=correlation)
            await _board_until(
                bus, done.job_id, lambda s: s.state == "succeeded" and s.updated_at > again_at, 300
            )
            out["first"], out["events"] = first, list(watcher.events)

            # 2. a long run cancelled on the job board stops on every rank
            long = _request(f"cancel-{correlation[:8]}", base, data, store, steps=5000)
            await bus.publish(long, correlation=correlation)
            await watcher.wait_for(
                JobProgress.event_type,
                timeout=300,
                predicate=lambda e: e.payload["job_id"] == long.job_id and e.payload["stage"] == "train",
            )
            run_dir = local_path(store.uri(f"runs/ft-{long.job_id}"))
            assert run_dir is not None
            out["ranks_running"] = len(_ranks_of(run_dir))
            await bus.jobs.update(long.job_id, "finetune", state="cancelled", message="stop it")
            out["cancelled"] = await _board_until(bus, long.job_id, lambda s: s.stage == "cancelled", 120)
            out["ranks_left"] = _ranks_of(run_dir)
            out["cancel_run_dir"] = run_dir
            await asyncio.sleep(2)
            out["events_after_cancel"] = list(watcher.events)
    finally:
        await bus.stop()
    return out


def test_two_process_torchrun_finetune_over_the_bus_registers_one_version(
    service_stack: Callable[..., Stack],
) -> None:
    stack = service_stack(
        ("finetuner", "model_registry"),
        PUYU_LAUNCHER="torchrun",
        PUYU_LAUNCH_NPROCS_PER_NODE="2",
        PUYU_LAUNCH_GRACE_SECONDS="20",
        PUYU_FINETUNER_DEVICE="cpu",
        PUYU_FINETUNER_NUM_THREADS="1",
    )
    store = ArtifactStore(stack.settings.artifact_root_uri)
    texts = [*heldout_texts(120), *(str(m["content"]) for r in chat_examples(40) for m in r["messages"])]  # type: ignore[attr-defined]
    base = build_tiny_model(
        store.local_staging("models/tiny-base/1"),
        texts,
        chat_template=CHAT_TEMPLATE,
        unk_token="<unk>",
        max_positions=512,
    )
    data = write_chat_dataset(stack.settings.home / "data" / "chat.jsonl", n=40)  # a read root

    out = asyncio.run(_scenario(stack, base, data, store))

    registered = [e for e in out["events"] if e.type == ModelRegistered.event_type]
    checkpoints = [e for e in out["events"] if e.type == CheckpointReady.event_type]
    assert len(registered) == 1 and len(checkpoints) == 1
    ckpt = checkpoints[0].payload
    assert checkpoints[0].id == f"ckpt:{ckpt['run_id']}:6" and ckpt["kind_of_run"] == "finetune"
    model_dir = local_path(ckpt["checkpoint"]["uri"])
    assert model_dir is not None
    lineage = json.loads((model_dir / "lineage.json").read_text())
    assert lineage["world_size"] == 2  # trained by two ranks
    assert (model_dir.parent / "logs" / "torchrun.log").is_file()

    registry = f"http://{stack.settings.host}:{http_port('model_registry', stack.settings)}"
    shown = httpx.get(
        f"{registry}/v1/models/tiny-ddp", timeout=30, headers=stack.client_auth().headers()
    ).json()
    assert [v["version"] for v in shown["versions"]] == [registered[0].payload["model"]["version"]]
    assert out["first"].result["checkpoint"] == ckpt["checkpoint"]["uri"]

    # The cancelled job: its two ranks (and torchrun) ran, then none is left; it announced nothing.
    assert out["ranks_running"] >= 3, "torchrun and two workers"
    assert out["ranks_left"] == [], out["ranks_left"]
    assert out["cancelled"].state == "cancelled"
    assert (out["cancel_run_dir"] / "cancel-requested").is_file()
    # The ranks agreed on a step to stop before and saved the state there (none is saved otherwise
    # before the end); a resubmitted run would resume from it.
    assert (out["cancel_run_dir"] / "state" / "finetune_state.pt").is_file()
    assert "cancelled before step" in (out["cancel_run_dir"] / "logs" / "torchrun.log").read_text()
    late = [e for e in out["events_after_cancel"] if e.type == CheckpointReady.event_type]
    assert len(late) == 1  # still only the first job's
