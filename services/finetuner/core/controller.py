"""The finetuner as a controller of launched runs (``shared.launch``): submit a run, or re-attach to
the one a previous delivery started, forward its progress, cancel it on every rank, and read its
outcome from the run folder.

A redelivered job finds the same run folder (the run id derives from the job id): a run that still
goes on, or that succeeded, is re-attached; one that stopped is resubmitted and resumes from its
saved state. The result of a run that succeeded under an earlier controller (which then stopped
before announcing it) is taken as it is, so the run is not repeated.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from services.finetuner.core.refusals import FinetuneRefusal
from services.finetuner.core.runs import RUN_MODULE, RunInputs
from services.finetuner.core.training import FinetuneCancelled, Progress
from shared.launch import (
    Launcher,
    LaunchSpecError,
    ProgressReader,
    RunResult,
    RunSpec,
    RunState,
    RunStatus,
    clear_outcome,
    load_handle,
    read_error,
    read_result,
    read_spec,
    save_handle,
    write_spec,
)

log = logging.getLogger(__name__)


class FinetuneRunFailed(RuntimeError):
    """The run failed for a reason a retry may not meet again (a crash, a lost node): the bus retries."""


class ControllerStopping(RuntimeError):
    """This controller stops while a cluster run goes on: the redelivered job re-attaches to it."""


class RunController:
    def __init__(
        self,
        launcher: Launcher,
        *,
        nprocs_per_node: int = 1,
        nnodes: int = 1,
        gpus_per_node: int = 0,
        poll_seconds: float = 0.5,
    ) -> None:
        self.launcher = launcher
        self.nprocs_per_node, self.nnodes, self.gpus_per_node = nprocs_per_node, nnodes, gpus_per_node
        self.poll_seconds = poll_seconds

    def run(
        self,
        run_id: str,
        run_dir: Path,
        inputs: RunInputs,
        *,
        progress: Progress | None = None,
        cancel: threading.Event | None = None,
        stopping: Callable[[], bool] = lambda: False,
    ) -> RunResult:
        """The run's result once it succeeded. Raises ``FinetuneRefusal`` (the run refused its
        request), ``FinetuneCancelled``, ``ControllerStopping`` or ``FinetuneRunFailed``."""
        done = self._finished_before(run_dir, inputs)
        if done is not None:
            log.info("run %s: succeeded before; its result is taken as it is", run_id)
            return done
        reader = ProgressReader(run_dir, start_at_end=True)  # before the run can write any
        handle = self._attach_or_submit(run_id, run_dir, inputs)
        status = self._watch(handle, reader, progress, cancel, stopping)
        return self._outcome(run_id, run_dir, status)

    @staticmethod
    def _finished_before(run_dir: Path, inputs: RunInputs) -> RunResult | None:
        result = read_result(run_dir)  # cleared before every submission: only a success leaves one
        if result is None:
            return None
        try:
            same = read_spec(run_dir) == inputs.to_json()
        except LaunchSpecError:
            same = False
        return result if same else None

    def _attach_or_submit(self, run_id: str, run_dir: Path, inputs: RunInputs) -> str:
        saved = load_handle(run_dir)
        if saved is not None and saved[0] == self.launcher.name:
            status = self.launcher.status(saved[1])
            if not status.state.terminal:
                log.info("run %s: re-attached to %s (%s)", run_id, saved[1], status.state)
                return saved[1]
        clear_outcome(run_dir)
        write_spec(run_dir, inputs.to_json())
        spec = RunSpec(
            run_id=run_id,
            module=RUN_MODULE,
            args=("--run-dir", str(run_dir)),
            run_dir=run_dir,
            nprocs_per_node=self.nprocs_per_node,
            nnodes=self.nnodes,
            gpus_per_node=self.gpus_per_node,
        )
        handle = self.launcher.submit(spec)
        save_handle(run_dir, self.launcher.name, handle)
        log.info("run %s: submitted to %s as %s", run_id, self.launcher.name, handle)
        return handle

    def _watch(
        self,
        handle: str,
        reader: ProgressReader,
        progress: Progress | None,
        cancel: threading.Event | None,
        stopping: Callable[[], bool],
    ) -> RunStatus:
        """Forward the run's reports until it ends; a cancel reaches every rank through the launcher."""
        cancelled = False
        while True:
            status = self.launcher.wait(handle, self.poll_seconds)
            _forward(reader, progress)
            if status.state.terminal:
                return status
            if cancel is not None and cancel.is_set() and not cancelled:
                if stopping() and self.launcher.outlives_controller:
                    raise ControllerStopping("the controller stops; the run goes on and is re-attached")
                self.launcher.cancel(handle)
                cancelled = True

    def _outcome(self, run_id: str, run_dir: Path, status: RunStatus) -> RunResult:
        if status.state == RunState.SUCCEEDED:
            result = read_result(run_dir)
            if result is None:
                raise FinetuneRunFailed(f"run {run_id} ended well but left no result.json in {run_dir}")
            return result
        if status.state == RunState.CANCELLED:
            raise FinetuneCancelled(f"run {run_id}: {status.message or 'cancelled'}")
        error = read_error(run_dir)
        if error is not None and error.refusal:
            raise FinetuneRefusal(error.message)
        raise FinetuneRunFailed(f"run {run_id} failed ({self.launcher.name}): {status.message}")


def _forward(reader: ProgressReader, progress: Progress | None) -> None:
    latest: dict[str, Any] | None = None  # of a burst of reports, the newest says it all
    for record in reader.new():
        latest = record
    if latest is not None and progress is not None:
        record = dict(latest)
        stage, fraction, message = (
            record.pop("stage"),
            float(record.pop("fraction")),
            record.pop("message", ""),
        )
        progress(stage, fraction, message, **{k: float(v) for k, v in record.items()})
