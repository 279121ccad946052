"""The controller loop the trainer and finetuner share: submit a run to a launcher, or re-attach to
the one a previous delivery started, forward its reports, cancel it on every rank, and read its
outcome from the run folder.

A redelivered job finds the same run folder (its run id derives from the job id): a run that still
goes on is re-attached; one that stopped is resubmitted and resumes from its saved state. The result
of a run that succeeded with the same spec (under a controller that then stopped before announcing
it) is taken as it is, so the run is not repeated.

Each service maps the exceptions below to its own (or subclasses them), so its messages stay its own.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from shared.errors import Refusal
from shared.launch.base import (
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

ProgressFn = Callable[..., None]  # (stage, fraction, message="", **metrics)
RecordFn = Callable[[dict[str, Any]], None]  # every record of progress.jsonl, as it is read


class RunRefused(Refusal):
    """The run refused its request (its error.json says so): the job is refused, not retried."""


class RunCancelled(RuntimeError):
    """The run stopped because it was cancelled."""


class RunFailed(RuntimeError):
    """The run failed for a reason a retry may not meet again (a crash, a lost node): the bus retries."""


class ControllerStopping(RuntimeError):
    """This controller stops while a cluster run goes on: the redelivered job re-attaches to it."""


class RunController:
    def __init__(
        self,
        launcher: Launcher,
        module: str,
        *,
        nprocs_per_node: int = 1,
        nnodes: int = 1,
        gpus_per_node: int = 0,
        poll_seconds: float = 0.5,
    ) -> None:
        self.launcher, self.module = launcher, module
        self.nprocs_per_node, self.nnodes, self.gpus_per_node = nprocs_per_node, nnodes, gpus_per_node
        self.poll_seconds = poll_seconds

    def run(
        self,
        run_id: str,
        run_dir: Path,
        spec_json: Mapping[str, Any],
        *,
        progress: ProgressFn | None = None,
        cancel: threading.Event | None = None,
        stopping: Callable[[], bool] = lambda: False,
        on_record: RecordFn | None = None,
    ) -> RunResult:
        """The run's result once it succeeded. Raises ``RunRefused``, ``RunCancelled``,
        ``ControllerStopping`` or ``RunFailed``."""
        spec = json.loads(json.dumps(dict(spec_json)))  # as spec.json will read back
        done = self._finished_before(run_dir, spec)
        if done is not None:
            log.info("run %s: succeeded before; its result is taken as it is", run_id)
            return done
        reader = ProgressReader(run_dir, start_at_end=True)  # before the run can write any
        handle = self._attach_or_submit(run_id, run_dir, spec)
        status = self._watch(handle, reader, progress, cancel, stopping, on_record)
        return self._outcome(run_id, run_dir, status)

    @staticmethod
    def _finished_before(run_dir: Path, spec: dict[str, Any]) -> RunResult | None:
        result = read_result(run_dir)  # cleared before every submission: only a success leaves one
        if result is None:
            return None
        try:
            same = read_spec(run_dir) == spec
        except LaunchSpecError:
            same = False
        return result if same else None

    def _attach_or_submit(self, run_id: str, run_dir: Path, spec: dict[str, Any]) -> str:
        saved = load_handle(run_dir)
        if saved is not None and saved[0] == self.launcher.name:
            status = self.launcher.status(saved[1])
            if not status.state.terminal:
                log.info("run %s: re-attached to %s (%s)", run_id, saved[1], status.state)
                return saved[1]
        clear_outcome(run_dir)
        write_spec(run_dir, spec)
        run = RunSpec(
            run_id=run_id,
            module=self.module,
            args=("--run-dir", str(run_dir)),
            run_dir=run_dir,
            nprocs_per_node=self.nprocs_per_node,
            nnodes=self.nnodes,
            gpus_per_node=self.gpus_per_node,
        )
        handle = self.launcher.submit(run)
        save_handle(run_dir, self.launcher.name, handle)
        log.info("run %s: submitted to %s as %s", run_id, self.launcher.name, handle)
        return handle

    def _watch(
        self,
        handle: str,
        reader: ProgressReader,
        progress: ProgressFn | None,
        cancel: threading.Event | None,
        stopping: Callable[[], bool],
        on_record: RecordFn | None,
    ) -> RunStatus:
        """Forward the run's reports until it ends; a cancel reaches every rank through the launcher."""
        cancelled = False
        while True:
            status = self.launcher.wait(handle, self.poll_seconds)
            _forward(reader, progress, on_record)
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
                raise RunFailed(f"run {run_id} ended well but left no result.json in {run_dir}")
            return result
        if status.state == RunState.CANCELLED:
            raise RunCancelled(f"run {run_id}: {status.message or 'cancelled'}")
        error = read_error(run_dir)
        if error is not None and error.refusal:
            raise RunRefused(error.message)
        raise RunFailed(f"run {run_id} failed ({self.launcher.name}): {status.message}")


def _forward(reader: ProgressReader, progress: ProgressFn | None, on_record: RecordFn | None) -> None:
    """Hand every record to ``on_record``; of a burst of stage reports, the newest says it all."""
    latest: dict[str, Any] | None = None
    for record in reader.new():
        if on_record is not None:
            on_record(record)
        if "stage" in record:
            latest = record
    if latest is not None and progress is not None:
        record = dict(latest)
        stage, fraction, message = (
            record.pop("stage"),
            float(record.pop("fraction")),
            record.pop("message", ""),
        )
        metrics = record.pop("metrics", record)  # nested under "metrics" or flat beside the stage
        progress(stage, fraction, message, **{k: float(v) for k, v in metrics.items()})
