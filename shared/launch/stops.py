"""The cancel flags of the runs a controller watches: the trainer's and the finetuner's cores mix this in."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class RunStops:
    def __init__(self) -> None:
        self.stopping = False  # the process stops: a run on this node keeps its state and is redelivered
        self._cancel_flags: dict[str, threading.Event] = {}  # job id -> the flag of its run here

    @contextmanager
    def cancel_flag(self, job_id: str) -> Iterator[threading.Event]:
        """The flag that stops ``job_id``'s run, for as long as this controller watches it."""
        flag = self._cancel_flags[job_id] = threading.Event()
        if self.stopping:
            flag.set()
        try:
            yield flag
        finally:
            self._cancel_flags.pop(job_id, None)

    def cancel(self, job_id: str) -> None:
        """Stop the job's run on every rank, if this controller watches it."""
        if (flag := self._cancel_flags.get(job_id)) is not None:
            flag.set()

    def stop_all(self) -> None:
        """The process stops: runs on this node stop and keep their state; cluster runs go on."""
        self.stopping = True
        for flag in self._cancel_flags.values():
            flag.set()
