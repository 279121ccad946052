"""Launchers: how a controller (the trainer or finetuner service) runs a training program.

A *run* is a Python module each rank executes (``python -m <module> <args>``). It reads ``spec.json``
from its run folder, trains, and writes into the same folder: ``progress.jsonl`` (rank 0), logs,
checkpoints and at the end ``result.json`` (or ``error.json`` when it fails). It never publishes
on the bus: the controller does, after the run succeeded. The folder is the only channel between
the two, so a run survives its controller and a restarted controller re-attaches to it through the
handle it stored there.

A library like a core: no bus, no gRPC, no HTTP. Each launcher (``local``, ``torchrun``, ``slurm``,
``kubernetes``) implements ``Launcher``; ``launcher_from`` picks the configured one.
"""

from __future__ import annotations

import json
import os
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar

from shared.errors import Refusal

SPEC_FILE = "spec.json"
PROGRESS_FILE = "progress.jsonl"
RESULT_FILE = "result.json"
ERROR_FILE = "error.json"
HANDLE_FILE = "handle.json"
LOG_DIR = "logs"

_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


class LaunchSpecError(Refusal, ValueError):
    """A run spec no launcher can run (bad run id, module, process counts)."""


class LauncherUnavailable(Refusal):
    """The configured launcher cannot take runs here: not configured, not installed or not reachable."""


class RunState(StrEnum):
    PENDING = "pending"  # accepted, not started (queued on a cluster; requeued after preemption)
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED)


@dataclass(frozen=True)
class RunSpec:
    run_id: str  # unique per job; names the run folder and the cluster job
    module: str  # python module each rank runs, e.g. "services.trainer.run_worker"
    args: tuple[str, ...]  # its arguments, e.g. ("--run-dir", str(run_dir))
    run_dir: Path  # spec.json in; progress.jsonl, logs, checkpoints, result.json out
    nprocs_per_node: int = 1
    nnodes: int = 1
    gpus_per_node: int = 0
    env: Mapping[str, str] = field(default_factory=dict)  # extra environment (never secrets in argv)

    def __post_init__(self) -> None:
        if not _RUN_ID.match(self.run_id):
            raise LaunchSpecError(
                f"run_id {self.run_id!r}: use 1-200 letters, digits, '.', '_' or '-', starting with "
                "a letter or digit"
            )
        if not _MODULE.match(self.module):
            raise LaunchSpecError(f"module {self.module!r} is not a dotted Python module name")
        if self.nprocs_per_node < 1 or self.nnodes < 1:
            raise LaunchSpecError(
                f"nprocs_per_node ({self.nprocs_per_node}) and nnodes ({self.nnodes}) must be >= 1"
            )
        if self.gpus_per_node < 0:
            raise LaunchSpecError(f"gpus_per_node ({self.gpus_per_node}) must be >= 0")
        bad = [k for k in self.env if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", k)]
        if bad:
            raise LaunchSpecError(f"env: invalid variable names {bad}")

    @property
    def world_size(self) -> int:
        return self.nprocs_per_node * self.nnodes

    @property
    def log_dir(self) -> Path:
        return self.run_dir / LOG_DIR


@dataclass(frozen=True)
class RunStatus:
    state: RunState
    message: str = ""
    restarts: int = 0  # requeues / preemptions / elastic restarts seen so far


class Launcher(ABC):
    """Runs a ``RunSpec`` somewhere and reports on it by handle.

    ``submit`` returns a handle (a string, stored by the controller in the run folder) from which
    ``status`` and ``cancel`` work in any later process, so a restarted controller re-attaches.
    """

    name: ClassVar[str]  # "local" | "torchrun" | "slurm" | "kubernetes"
    # Whether a run lives on when its controller stops (a cluster job) or must be stopped with it
    # (local threads, torchrun on the controller's node): the controller cancels the latter on
    # shutdown and resubmits on redelivery; the run resumes from its last checkpoint.
    outlives_controller: ClassVar[bool] = False

    @classmethod
    @abstractmethod
    def from_settings(cls, settings: Any) -> Launcher:
        """Built from the service's settings (``shared.settings.LaunchSettings`` or a subclass);
        a launcher may read its own ``PUYU_<NAME>_*`` settings besides."""

    @abstractmethod
    def check(self) -> None:
        """Raise LauncherUnavailable naming why runs cannot be submitted here now."""

    @abstractmethod
    def submit(self, spec: RunSpec) -> str:
        """Start the run; returns its handle. Raises LaunchSpecError / LauncherUnavailable."""

    @abstractmethod
    def status(self, handle: str) -> RunStatus:
        """The run's state now; a handle this launcher cannot find is FAILED with the reason."""

    @abstractmethod
    def cancel(self, handle: str) -> None:
        """Stop every rank of the run (idempotent; a finished run stays as it ended)."""

    def wait(self, handle: str, timeout: float) -> RunStatus:
        """The status once the run ends or ``timeout`` seconds pass, whichever is first. Launchers
        that can be told of the end (a thread, a child process) override it; this one polls."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.status(handle)
            left = deadline - time.monotonic()
            if status.state.terminal or left <= 0:
                return status
            time.sleep(min(left, 1.0))


# ------------------------------------------------------------------------------------ choosing one
LAUNCHERS: dict[str, str] = {
    "local": "shared.launch.local:LocalLauncher",
    "torchrun": "shared.launch.torchrun:TorchrunLauncher",
    "slurm": "shared.launch.slurm:SlurmLauncher",
    "kubernetes": "shared.launch.kubernetes:KubernetesLauncher",
}


def launcher_from(settings: Any) -> Launcher:
    """The launcher ``settings.launcher`` names (PUYU_LAUNCHER), built from the settings."""
    import importlib

    name = getattr(settings, "launcher", "local")
    if name not in LAUNCHERS:
        raise LauncherUnavailable(f"unknown launcher {name!r} (PUYU_LAUNCHER): one of {sorted(LAUNCHERS)}")
    module, cls_name = LAUNCHERS[name].split(":")
    try:
        cls = getattr(importlib.import_module(module), cls_name)
    except ImportError as exc:
        raise LauncherUnavailable(f"launcher {name!r} cannot be loaded here: {exc}") from exc
    launcher: Launcher = cls.from_settings(settings)
    return launcher


# ------------------------------------------------------------------------------ the run folder
def _write_json_atomic(path: Path, obj: Any) -> None:
    """Readers in other processes never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)


def _read_json(path: Path) -> Any | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None


def write_spec(run_dir: Path, spec: Mapping[str, Any]) -> Path:
    """The controller writes what the run is to do (the job's spec, inputs, output location)."""
    path = run_dir / SPEC_FILE
    _write_json_atomic(path, dict(spec))
    return path


def read_spec(run_dir: Path) -> dict[str, Any]:
    spec = _read_json(run_dir / SPEC_FILE)
    if not isinstance(spec, dict):
        raise LaunchSpecError(f"{run_dir / SPEC_FILE}: missing or not a JSON object")
    return spec


def append_progress(run_dir: Path, record: Mapping[str, Any]) -> None:
    """One JSON line per report (rank 0 only); a line is written in one call, so readers see whole
    lines or nothing of it."""
    line = json.dumps(dict(record), separators=(",", ":")) + "\n"  # NaN allowed: a loss may be one
    with (run_dir / PROGRESS_FILE).open("a", encoding="utf-8") as f:
        f.write(line)


class ProgressReader:
    """Follows ``progress.jsonl``: each ``new()`` yields the records appended since the last call."""

    def __init__(self, run_dir: Path, start_at_end: bool = False) -> None:
        self.path = run_dir / PROGRESS_FILE
        self.offset = self.path.stat().st_size if start_at_end and self.path.exists() else 0

    def new(self) -> Iterator[dict[str, Any]]:
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return
        end = data.rfind(b"\n") + 1  # a line still being written waits for the next call
        self.offset += end
        for raw in data[:end].splitlines():
            if raw.strip():
                yield json.loads(raw)


def read_progress(run_dir: Path) -> Iterator[dict[str, Any]]:
    """Every progress record of the run so far."""
    yield from ProgressReader(run_dir).new()


@dataclass(frozen=True)
class RunResult:
    checkpoint: str  # URI (or path) of the final checkpoint
    step: int
    metrics: dict[str, float]
    extra: dict[str, Any] = field(default_factory=dict)  # what else the run wants its controller to know


def write_result(
    run_dir: Path, checkpoint: str, step: int, metrics: Mapping[str, float], **extra: Any
) -> Path:
    """The run's last act on success (rank 0)."""
    path = run_dir / RESULT_FILE
    _write_json_atomic(
        path, {"checkpoint": checkpoint, "step": step, "metrics": dict(metrics), "extra": extra}
    )
    return path


def read_result(run_dir: Path) -> RunResult | None:
    """The run's result, None while it has none."""
    data = _read_json(run_dir / RESULT_FILE)
    if data is None:
        return None
    return RunResult(
        str(data["checkpoint"]), int(data["step"]), dict(data["metrics"]), dict(data.get("extra", {}))
    )


@dataclass(frozen=True)
class RunError:
    message: str
    refusal: bool  # the run refused its spec: retrying cannot help


def write_error(run_dir: Path, message: str, refusal: bool) -> Path:
    """A failing rank says why (the first one to fail wins: later ranks often fail *because* of it)."""
    path = run_dir / ERROR_FILE
    if not path.exists():
        _write_json_atomic(path, {"message": message, "refusal": refusal})
    return path


def read_error(run_dir: Path) -> RunError | None:
    data = _read_json(run_dir / ERROR_FILE)
    return None if data is None else RunError(str(data["message"]), bool(data["refusal"]))


def save_handle(run_dir: Path, launcher: str, handle: str) -> None:
    """The controller keeps the handle where a restarted controller finds it."""
    _write_json_atomic(run_dir / HANDLE_FILE, {"launcher": launcher, "handle": handle})


def load_handle(run_dir: Path) -> tuple[str, str] | None:
    """(launcher name, handle) of the run last submitted from this folder, None if none."""
    data = _read_json(run_dir / HANDLE_FILE)
    return None if data is None else (str(data["launcher"]), str(data["handle"]))


def clear_outcome(run_dir: Path) -> None:
    """Before a (re)submission: the last attempt's result and error are no longer the run's."""
    for name in (RESULT_FILE, ERROR_FILE):
        (run_dir / name).unlink(missing_ok=True)


class UnavailableLauncher(Launcher):
    """Stands in for a launcher that could not be built (an unknown name, missing settings): the
    service still starts, and every submit is refused with the reason."""

    name: ClassVar[str] = "unavailable"

    def __init__(self, reason: str) -> None:
        self.reason = reason

    @classmethod
    def from_settings(cls, settings: Any) -> Launcher:
        try:
            return launcher_from(settings)
        except LauncherUnavailable as exc:
            return cls(str(exc))

    def check(self) -> None:
        raise LauncherUnavailable(self.reason)

    def submit(self, spec: RunSpec) -> str:
        raise LauncherUnavailable(self.reason)

    def status(self, handle: str) -> RunStatus:
        return RunStatus(RunState.FAILED, self.reason)

    def cancel(self, handle: str) -> None:
        return None
