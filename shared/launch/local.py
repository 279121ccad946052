"""``local``: the run in the service's own process, on a thread (the embedded default, ``make demo``).

The run module's ``main(argv, cancel=event)`` is called directly: no new interpreter, no import of
torch again, the same speed as calling the training function. Cancel sets the event; the run stops
at its next step. A handle lives as long as the process: after a restart its run is gone, and the
controller resubmits it (the run resumes from its last checkpoint).
"""

from __future__ import annotations

import importlib
import logging
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any, ClassVar

from shared.launch.base import Launcher, LaunchSpecError, RunSpec, RunState, RunStatus

log = logging.getLogger(__name__)


@dataclass
class _LocalRun:
    thread: threading.Thread
    cancel: threading.Event = field(default_factory=threading.Event)
    exit_code: int | None = None
    error: str = ""


_RUNS: dict[str, _LocalRun] = {}  # every local run of this process, by handle
_RUNS_LOCK = threading.Lock()


class LocalLauncher(Launcher):
    name: ClassVar[str] = "local"

    @classmethod
    def from_settings(cls, settings: Any) -> LocalLauncher:
        return cls()

    def check(self) -> None:
        return None  # always available: it is this process

    def submit(self, spec: RunSpec) -> str:
        if spec.world_size != 1:
            raise LaunchSpecError(
                f"the local launcher runs one process (this service); {spec.world_size} processes "
                "need PUYU_LAUNCHER=torchrun (this node), slurm or kubernetes"
            )
        if spec.env:
            raise LaunchSpecError(
                f"the local launcher runs in this process and cannot set its environment ({sorted(spec.env)})"
            )
        entry = getattr(importlib.import_module(spec.module), "main", None)
        if not callable(entry):
            raise LaunchSpecError(f"module {spec.module} has no main(argv, cancel=...) to run in-process")
        spec.run_dir.mkdir(parents=True, exist_ok=True)
        handle = f"local:{spec.run_id}:{uuid.uuid4().hex[:12]}"

        def target() -> None:
            try:
                run.exit_code = int(entry(list(spec.args), cancel=run.cancel) or 0)
            except BaseException as exc:  # the run's own failure, reported through status
                log.exception("local run %s failed", spec.run_id)
                run.exit_code, run.error = 1, f"{type(exc).__name__}: {exc}"

        run = _LocalRun(threading.Thread(target=target, name=f"run-{spec.run_id}", daemon=True))
        with _RUNS_LOCK:
            _RUNS[handle] = run
        run.thread.start()
        return handle

    def status(self, handle: str) -> RunStatus:
        with _RUNS_LOCK:
            run = _RUNS.get(handle)
        if run is None:
            return RunStatus(RunState.FAILED, f"{handle}: no such run in this process (it stopped since)")
        if run.thread.is_alive():
            return RunStatus(RunState.RUNNING)
        if run.exit_code == 0:
            return RunStatus(RunState.SUCCEEDED)
        if run.cancel.is_set():
            return RunStatus(RunState.CANCELLED, "cancelled")
        return RunStatus(RunState.FAILED, run.error or f"the run returned exit code {run.exit_code}")

    def wait(self, handle: str, timeout: float) -> RunStatus:
        with _RUNS_LOCK:
            run = _RUNS.get(handle)
        if run is not None:
            run.thread.join(timeout)
        return self.status(handle)

    def cancel(self, handle: str) -> None:
        with _RUNS_LOCK:
            run = _RUNS.get(handle)
        if run is not None:
            run.cancel.set()
