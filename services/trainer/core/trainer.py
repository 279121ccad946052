"""The trainer as a service runs it: a *controller* that validates a job, writes the run's spec into
its run folder, submits the run to a launcher (``shared.launch``), watches it, and hands the caller
each checkpoint the run stored, the final one once the run succeeded.

The run itself is ``run_from_folder`` (``run_folder.py``, around ``run_training``), executed by each
rank wherever the launcher puts it: on a thread of this process (``local``, the default), in N
processes of this node (``torchrun``) or on a cluster. The run id derives from the job id, so a
redelivered job finds the same run folder: it re-attaches to a run still going (or finished), or
resubmits one that stopped, which resumes from its last saved state.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contracts.events import ArtifactRef, DatasetRef, TrainSpec
from services.trainer.core.loop import ProgressFn, TrainingCancelled
from services.trainer.core.refusals import TrainConfigError
from services.trainer.core.run import TrainJob, validate
from services.trainer.core.run_folder import RUN_MODULE, run_spec
from shared.artifacts import ArtifactStore
from shared.launch import Launcher
from shared.launch import controller as launch
from shared.launch.controller import RunFailed
from shared.launch.local import LocalLauncher
from shared.launch.stops import RunStops
from shared.read_roots import ReadRoots


def run_id_for(job_id: str) -> str:
    """The run id is a function of the job id: a redelivered job resumes the same run."""
    return "pretrain-" + re.sub(r"[^A-Za-z0-9._-]", "_", job_id)


@dataclass(frozen=True)
class StoredCheckpoint:
    """A checkpoint of a run, copied into the artifact store."""

    run_id: str
    step: int
    final: bool
    checkpoint: ArtifactRef
    metrics: dict[str, float]


@dataclass(frozen=True)
class TrainOutcome:
    run_id: str
    last: StoredCheckpoint | None  # the last checkpoint announced (the final one when the run ends)

    def result(self) -> dict[str, Any]:
        """What the job board keeps as the job's result."""
        if self.last is None:
            return {"run_id": self.run_id}
        return {
            "run_id": self.run_id,
            "checkpoint": self.last.checkpoint.model_dump(mode="json"),
            "step": self.last.step,
            "metrics": self.last.metrics,
        }


class Trainer(RunStops):
    def __init__(
        self,
        store: ArtifactStore,
        device: str = "auto",
        read_roots: ReadRoots | None = None,
        launcher: Launcher | None = None,
        *,
        nprocs_per_node: int = 1,
        nnodes: int = 1,
        gpus_per_node: int = 0,
        runs_dir: Path | None = None,
        poll_seconds: float = 0.5,
    ) -> None:
        self.store, self.device = store, device
        self.read_roots = read_roots or ReadRoots([store.root_uri])  # where its inputs may come from
        self.launcher = launcher or LocalLauncher()
        self.nprocs_per_node, self.nnodes, self.gpus_per_node = nprocs_per_node, nnodes, gpus_per_node
        self.runs_dir = runs_dir
        self.controller = launch.RunController(
            self.launcher,
            RUN_MODULE,
            nprocs_per_node=nprocs_per_node,
            nnodes=nnodes,
            gpus_per_node=gpus_per_node,
            poll_seconds=poll_seconds,
        )
        # Runs on this node share its cores (and torch's threads are process-wide under ``local``):
        # one at a time; the others wait their turn. Cluster runs wait in the cluster's queue instead.
        self.one_run_at_a_time = asyncio.Lock()
        RunStops.__init__(self)

    @property
    def world_size(self) -> int:
        return self.nprocs_per_node * self.nnodes

    def run_slot(self) -> AbstractAsyncContextManager[Any]:
        """What a job holds while its run goes on: this node's one slot, or nothing on a cluster."""
        return contextlib.nullcontext() if self.launcher.outlives_controller else self.one_run_at_a_time

    def run_dir(self, run_id: str) -> Path:
        """The run folder: under PUYU_LAUNCH_RUNS_DIR, else the artifact store's runs/ (as before)."""
        if self.runs_dir is not None:
            path = self.runs_dir / run_id
            path.mkdir(parents=True, exist_ok=True)
            return path
        return self.store.local_staging(f"runs/{run_id}")

    # ------------------------------------------------------------------------------- checks
    def check_inputs(self, spec: TrainSpec, datasets: list[DatasetRef]) -> None:
        """Refuse a dataset, tokenizer or starting checkpoint outside the folders this service may read."""
        self.read_roots.require_all([d.manifest_uri for d in datasets], "dataset")
        if spec.tokenizer_uri is not None:
            self.read_roots.require(spec.tokenizer_uri, "tokenizer_uri")
        if spec.init_from is not None:
            self.read_roots.require(spec.init_from, "init_from")

    def check_submit(self, spec: TrainSpec, datasets: list[DatasetRef]) -> TrainSpec:
        """Everything refusable before a run exists: inputs, the spec at this launch's world size,
        and the launcher itself (configured, reachable). Returns the resolved spec."""
        self.check_inputs(spec, datasets)  # before validate reads any of them
        resolved = validate(spec, self.world_size)
        self.launcher.check()
        return resolved

    # ------------------------------------------------------------------------------- training
    def train(
        self,
        job_id: str,
        spec: TrainSpec,
        datasets: list[DatasetRef],
        *,
        progress: ProgressFn | None = None,
        on_checkpoint: Callable[[StoredCheckpoint], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> TrainOutcome:
        """Run (or re-attach to, or resume) the job's run until it ends; ``on_checkpoint`` hears of each
        checkpoint the run stored, the final one after the run succeeded.

        Raises TrainConfigError, DatasetError or LauncherUnavailable (refusals), TrainingCancelled
        when ``cancel`` is set, RunFailed when the run failed otherwise.
        """
        self.check_submit(spec, datasets)
        run_id = run_id_for(job_id)
        run_dir = self.run_dir(run_id)
        job = TrainJob(
            run_id=run_id,
            spec=spec,
            sources=[d.manifest_uri for d in datasets],
            datasets=[d.model_dump(mode="json") for d in datasets],
        )
        try:
            result = self.controller.run(
                run_id,
                run_dir,
                run_spec(job, self.store.root_uri, self.device),
                progress=progress,
                cancel=cancel,
                stopping=lambda: self.stopping,
                on_record=lambda record: _announce(run_id, record, on_checkpoint),
            )
        except launch.RunRefused as exc:
            raise TrainConfigError(str(exc)) from exc
        except (launch.RunCancelled, launch.ControllerStopping) as exc:
            raise TrainingCancelled(str(exc)) from exc
        if "artifact" not in result.extra:
            raise RunFailed(f"run {run_id} ended well but left no result.json in {run_dir}")
        stored = StoredCheckpoint(
            run_id, result.step, True, ArtifactRef.model_validate(result.extra["artifact"]), result.metrics
        )
        if on_checkpoint is not None:
            on_checkpoint(stored)  # once per delivery; the event id makes it once on the bus
        return TrainOutcome(run_id, stored)


def _announce(
    run_id: str, record: dict[str, Any], on_checkpoint: Callable[[StoredCheckpoint], None] | None
) -> None:
    """An intermediate checkpoint the run stored (a progress record of its own) is announced."""
    if "checkpoint" in record and on_checkpoint is not None:
        on_checkpoint(_stored(run_id, record["checkpoint"]))


def _stored(run_id: str, record: dict[str, Any]) -> StoredCheckpoint:
    return StoredCheckpoint(
        run_id,
        int(record["step"]),
        bool(record["final"]),
        ArtifactRef.model_validate(record["checkpoint"]),
        dict(record["metrics"]),
    )
