"""A training run as a launcher starts it: everything it needs from ``spec.json`` in its run folder,
everything it tells its controller into the same folder, never the bus.

Each rank calls ``run_from_folder``; rank 0 reports progress (``progress.jsonl``), copies each
checkpoint into the artifact store (the copy is a no-op when the run folder is inside a local store)
and, at the end, writes ``result.json``. An intermediate checkpoint is a progress record
``{"checkpoint": {...}}`` so that the controller can announce it too.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from contracts.events import TrainSpec
from services.trainer.core.refusals import TrainConfigError
from services.trainer.core.run import CheckpointInfo, TrainJob, TrainResult, run_training
from shared.artifacts import ArtifactStore
from shared.distributed import world
from shared.launch import append_progress, read_spec, write_result

SPEC_KIND = "puyu.trainer.run/v1"
RUN_MODULE = "services.trainer.run_worker"  # what each rank runs: python -m RUN_MODULE --run-dir D


def checkpoint_key(run_id: str, step: int) -> str:
    """Where a run's checkpoint lives in the artifact store."""
    return f"runs/{run_id}/checkpoints/step-{step}"


def run_spec(job: TrainJob, artifact_root: str, device: str) -> dict[str, Any]:
    """What the controller writes into ``spec.json``."""
    return {
        "kind": SPEC_KIND,
        "run_id": job.run_id,
        "spec": job.spec.model_dump(mode="json"),
        "sources": list(job.sources),
        "datasets": list(job.datasets),
        "artifact_root": artifact_root,
        "device": device,
    }


def read_run_spec(run_dir: Path) -> tuple[TrainJob, str, str]:
    """(job, artifact root, device) from ``spec.json``."""
    data = read_spec(run_dir)
    if data.get("kind") != SPEC_KIND:
        raise TrainConfigError(
            f"{run_dir}/spec.json is not a training run's spec (kind {data.get('kind')!r})"
        )
    job = TrainJob(
        run_id=str(data["run_id"]),
        spec=TrainSpec.model_validate(data["spec"]),
        sources=[str(s) for s in data["sources"]],
        datasets=list(data.get("datasets", [])),
    )
    return job, str(data["artifact_root"]), str(data.get("device", "auto"))


def run_from_folder(run_dir: Path, cancel: threading.Event | None = None) -> TrainResult:
    """Train (or resume) the run ``run_dir/spec.json`` describes. Raises what ``run_training`` raises."""
    job, artifact_root, device = read_run_spec(run_dir)
    store = ArtifactStore(artifact_root)
    lead = world().main
    final: list[dict[str, Any]] = []

    def progress(stage: str, fraction: float, message: str = "", **metrics: float) -> None:
        if lead:
            append_progress(
                run_dir, {"stage": stage, "fraction": fraction, "message": message, "metrics": metrics}
            )

    def on_checkpoint(info: CheckpointInfo) -> None:  # rank 0 only
        ref = store.put_dir(info.path, checkpoint_key(job.run_id, info.step))
        record = {
            "step": info.step,
            "final": info.final,
            "checkpoint": ref.model_dump(mode="json"),
            "metrics": info.metrics,
        }
        if info.final:
            final.append(record)
        else:
            append_progress(run_dir, {"checkpoint": record})

    result = run_training(
        job, run_dir, store, progress=progress, on_checkpoint=on_checkpoint, cancel=cancel, device=device
    )
    if lead and final:
        last = final[-1]
        write_result(
            run_dir,
            last["checkpoint"]["uri"],
            last["step"],
            last["metrics"],
            artifact=last["checkpoint"],
            run_id=job.run_id,
        )
    return result
