"""The finetuner's run controller: the shared controller loop (``shared.launch.controller``) over the
finetuner's run module, its refusals and cancellations raised as the finetuner's own."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from services.finetuner.core.refusals import FinetuneRefusal
from services.finetuner.core.runs import RUN_MODULE, RunInputs
from services.finetuner.core.training import FinetuneCancelled, Progress
from shared.launch import Launcher, RunResult
from shared.launch import controller as launch
from shared.launch.controller import ControllerStopping
from shared.launch.controller import RunFailed as FinetuneRunFailed

__all__ = ["ControllerStopping", "FinetuneRunFailed", "RunController"]


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
        self.loop = launch.RunController(
            launcher,
            RUN_MODULE,
            nprocs_per_node=nprocs_per_node,
            nnodes=nnodes,
            gpus_per_node=gpus_per_node,
            poll_seconds=poll_seconds,
        )

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
        try:
            return self.loop.run(
                run_id, run_dir, inputs.to_json(), progress=progress, cancel=cancel, stopping=stopping
            )
        except launch.RunRefused as exc:
            raise FinetuneRefusal(str(exc)) from exc
        except launch.RunCancelled as exc:
            raise FinetuneCancelled(str(exc)) from exc
