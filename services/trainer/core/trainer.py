"""The trainer as a service runs it: one run per process, the run's checkpoints stored as artifacts,
and cancel flags a stop or a cancel request sets.

The run itself is ``run_training`` (``run.py``); this class adds what a long-lived process needs
around it, as plain Python: the artifact store, the run id derived from the job id (so a redelivered
job resumes the same run), the rule that one run trains at a time, and the flags that stop a run at
its next step.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from contracts.events import ArtifactRef, DatasetRef, TrainSpec
from services.trainer.core.loop import ProgressFn
from services.trainer.core.run import CheckpointInfo, TrainJob, run_training
from shared.artifacts import ArtifactStore
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


class Trainer:
    def __init__(
        self, store: ArtifactStore, device: str = "auto", read_roots: ReadRoots | None = None
    ) -> None:
        self.store, self.device = store, device
        self.read_roots = read_roots or ReadRoots([store.root_uri])  # where its inputs may come from
        # torch's threads are process-wide: one run per process; the others wait their turn.
        self.one_run_at_a_time = asyncio.Lock()
        self.stopping = False  # the process stops: a run keeps its state and is redelivered
        self._cancel_flags: dict[str, threading.Event] = {}  # job id -> the flag of its run here

    # ------------------------------------------------------------------------------- stopping runs
    @contextmanager
    def cancel_flag(self, job_id: str) -> Iterator[threading.Event]:
        """The flag that stops ``job_id``'s run at its next step, for as long as the run lasts here."""
        flag = self._cancel_flags[job_id] = threading.Event()
        if self.stopping:
            flag.set()
        try:
            yield flag
        finally:
            self._cancel_flags.pop(job_id, None)

    def cancel(self, job_id: str) -> None:
        """Stop the job's run at its next step, if it trains here."""
        if (flag := self._cancel_flags.get(job_id)) is not None:
            flag.set()

    def stop_all(self) -> None:
        """The process stops: every run stops at its next step and keeps its state."""
        self.stopping = True
        for flag in self._cancel_flags.values():
            flag.set()

    # ------------------------------------------------------------------------------- training
    def check_inputs(self, spec: TrainSpec, datasets: list[DatasetRef]) -> None:
        """Refuse a dataset, tokenizer or starting checkpoint outside the folders this service may read."""
        self.read_roots.require_all([d.manifest_uri for d in datasets], "dataset")
        if spec.tokenizer_uri is not None:
            self.read_roots.require(spec.tokenizer_uri, "tokenizer_uri")
        if spec.init_from is not None:
            self.read_roots.require(spec.init_from, "init_from")

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
        """Run (or resume) the job's run; each checkpoint is stored before ``on_checkpoint`` hears of it.

        Raises TrainConfigError or DatasetError (refusals), TrainingCancelled when ``cancel`` is set.
        """
        self.check_inputs(spec, datasets)
        run_id = run_id_for(job_id)
        job = TrainJob(
            run_id=run_id,
            spec=spec,
            sources=[d.manifest_uri for d in datasets],
            datasets=[d.model_dump(mode="json") for d in datasets],
        )
        announced: list[StoredCheckpoint] = []

        def store_checkpoint(info: CheckpointInfo) -> None:
            ref = self.store.put_dir(info.path, f"runs/{run_id}/checkpoints/step-{info.step}")
            stored = StoredCheckpoint(run_id, info.step, info.final, ref, info.metrics)
            if on_checkpoint is not None:
                on_checkpoint(stored)
            announced.append(stored)

        run_training(
            job,
            self.store.local_staging(f"runs/{run_id}"),
            self.store,
            progress=progress,
            on_checkpoint=store_checkpoint,
            cancel=cancel,
            device=self.device,
        )
        return TrainOutcome(run_id, announced[-1] if announced else None)
