"""``torchrun``: N processes on this node, ``python -m torch.distributed.run --standalone``.

torchrun starts in a session of its own (so a signal to the service's process group never reaches
it by accident, and the run can outlive a controller that crashed); its workers each start a
session of their own too (torchrun does that), so cancel collects the whole process tree first and
signals every process in it: SIGTERM (the run saves its state at the next step), SIGKILL whoever is
left after the grace period. Output of every rank goes to ``logs/torchrun.log`` in the run folder.
The ranks inherit the service's environment without its bus and API credentials.

The handle names the torchrun process (pid and start time, so a reused pid is never mistaken for
it) and the run folder. A controller that started the run reads the exit code; a restarted one,
which cannot, reads the run folder instead: ``result.json`` means success.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import psutil

from shared.launch.base import (
    ERROR_FILE,
    RESULT_FILE,
    Launcher,
    LauncherUnavailable,
    LaunchSpecError,
    RunSpec,
    RunState,
    RunStatus,
    read_error,
)
from shared.launch.environment import looks_secret

LOG_NAME = "torchrun.log"
CANCEL_MARKER = "cancel-requested"  # in the run folder: the run ended because it was cancelled
_TAIL_BYTES = 2000

_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}  # runs this process started, by pid (to reap them)
_CHILDREN_LOCK = threading.Lock()


def run_environment(base: Mapping[str, str]) -> dict[str, str]:
    """The service's environment less its own identity on the bus and the APIs (PUYU_* credentials:
    a run never talks to either). Other credentials stay: the run writes its checkpoints into the
    artifact store with the store's keys, as the service would."""
    return {k: v for k, v in base.items() if not (k.startswith("PUYU_") and looks_secret(k))}


def _log_tail(run_dir: Path) -> str:
    path = run_dir / "logs" / LOG_NAME
    try:
        with path.open("rb") as f:
            f.seek(max(0, path.stat().st_size - _TAIL_BYTES))
            return f.read().decode("utf-8", "replace").strip()
    except OSError:
        return ""


class TorchrunLauncher(Launcher):
    name: ClassVar[str] = "torchrun"

    def __init__(self, grace_seconds: float = 30.0, python: str = sys.executable) -> None:
        self.grace_seconds, self.python = grace_seconds, python

    @classmethod
    def from_settings(cls, settings: Any) -> TorchrunLauncher:
        return cls(grace_seconds=float(getattr(settings, "launch_grace_seconds", 30.0)))

    def check(self) -> None:
        if importlib.util.find_spec("torch") is None:
            raise LauncherUnavailable("the torchrun launcher needs PyTorch: pip install 'puyu[train]'")
        import torch.distributed

        if not torch.distributed.is_available():
            raise LauncherUnavailable("the torchrun launcher needs a PyTorch built with torch.distributed")
        if not os.access(self.python, os.X_OK):
            raise LauncherUnavailable(f"the torchrun launcher's interpreter {self.python} is not executable")

    def submit(self, spec: RunSpec) -> str:
        self.check()
        if spec.nnodes != 1:
            raise LaunchSpecError(
                f"the torchrun launcher runs on this node only; {spec.nnodes} nodes need slurm or kubernetes"
            )
        if spec.gpus_per_node:
            import torch

            have = torch.cuda.device_count()
            if have < spec.gpus_per_node:
                raise LauncherUnavailable(
                    f"the run asks for {spec.gpus_per_node} GPUs per node; this node has {have}"
                )
        spec.log_dir.mkdir(parents=True, exist_ok=True)
        (spec.run_dir / CANCEL_MARKER).unlink(missing_ok=True)
        cmd = [
            self.python,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nnodes=1",
            f"--nproc-per-node={spec.nprocs_per_node}",
            "--max-restarts=0",
            "-m",
            spec.module,
            *spec.args,
        ]
        env = {**run_environment(os.environ), **spec.env, "PYTHONUNBUFFERED": "1"}
        with (spec.log_dir / LOG_NAME).open("ab") as log:
            log.write(f"=== {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(cmd)}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        with _CHILDREN_LOCK:
            _CHILDREN[proc.pid] = proc
        try:
            started = psutil.Process(proc.pid).create_time()
        except psutil.NoSuchProcess:  # already gone: the exit code is kept in the Popen
            started = 0.0
        return json.dumps({"pid": proc.pid, "started": started, "run_dir": str(spec.run_dir)})

    # ------------------------------------------------------------------------------ watching
    @staticmethod
    def _parse(handle: str) -> tuple[int, float, Path]:
        try:
            h = json.loads(handle)
            return int(h["pid"]), float(h["started"]), Path(h["run_dir"])
        except (ValueError, KeyError, TypeError) as exc:
            raise LaunchSpecError(f"not a torchrun handle: {handle!r}") from exc

    @staticmethod
    def _own(pid: int) -> subprocess.Popen[bytes] | None:
        with _CHILDREN_LOCK:
            return _CHILDREN.get(pid)

    @staticmethod
    def _process(pid: int, started: float) -> psutil.Process | None:
        """The run's torchrun process if it still runs (a zombie or a reused pid is not it)."""
        try:
            proc = psutil.Process(pid)
            if abs(proc.create_time() - started) > 0.01 or proc.status() == psutil.STATUS_ZOMBIE:
                return None
            return proc
        except psutil.Error:
            return None

    def status(self, handle: str) -> RunStatus:
        pid, started, run_dir = self._parse(handle)
        child = self._own(pid)
        if child is not None:
            code = child.poll()
            if code is None:
                return RunStatus(RunState.RUNNING)
            return self._ended(run_dir, code)
        if self._process(pid, started) is not None:
            return RunStatus(RunState.RUNNING)
        return self._ended(run_dir, None)  # started by another process: its exit code is lost

    @staticmethod
    def _ended(run_dir: Path, code: int | None) -> RunStatus:
        finished = (run_dir / RESULT_FILE).exists()
        if (run_dir / CANCEL_MARKER).exists() and not finished:
            return RunStatus(RunState.CANCELLED, "cancelled")  # torchrun may exit 0 on SIGTERM
        if code == 0 or (code is None and finished):
            return RunStatus(RunState.SUCCEEDED)
        error = read_error(run_dir)
        if error is not None:
            return RunStatus(RunState.FAILED, error.message)
        how = f"torchrun exited with {code}" if code is not None else "the run's processes are gone"
        tail = _log_tail(run_dir)
        return RunStatus(RunState.FAILED, f"{how} (no {ERROR_FILE}); log tail:\n{tail}" if tail else how)

    def wait(self, handle: str, timeout: float) -> RunStatus:
        pid, _, _ = self._parse(handle)
        child = self._own(pid)
        if child is None:
            return super().wait(handle, timeout)
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout)
        return self.status(handle)

    # ------------------------------------------------------------------------------ cancelling
    def cancel(self, handle: str) -> None:
        pid, started, run_dir = self._parse(handle)
        root = self._process(pid, started)
        procs = self._tree(root, run_dir)
        if not procs:
            return
        (run_dir / CANCEL_MARKER).touch()
        self._signal(procs, signal.SIGTERM, pid if root is not None else None)
        _, alive = psutil.wait_procs(procs, timeout=self.grace_seconds)
        if alive:
            self._signal(alive, signal.SIGKILL, pid if root is not None and root in alive else None)
            psutil.wait_procs(alive, timeout=10)
        child = self._own(pid)
        if child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(10)  # reap it: its exit code stays readable

    @staticmethod
    def _tree(root: psutil.Process | None, run_dir: Path) -> list[psutil.Process]:
        """torchrun and every descendant, plus any rank orphaned by a torchrun that died (a process of
        this user whose command line names the run folder)."""
        procs: dict[int, psutil.Process] = {}
        if root is not None:
            with contextlib.suppress(psutil.Error):
                procs[root.pid] = root
                procs.update({p.pid: p for p in root.children(recursive=True)})
        me, folder = os.getuid(), str(run_dir)
        for p in psutil.process_iter(["cmdline", "uids"]):
            with contextlib.suppress(psutil.Error, TypeError):
                if p.info["uids"].real == me and folder in (p.info["cmdline"] or []) and p.pid != os.getpid():
                    procs.setdefault(p.pid, p)
        return list(procs.values())

    @staticmethod
    def _signal(procs: list[psutil.Process], sig: signal.Signals, group: int | None) -> None:
        if group is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, sig)  # torchrun's session leader: pgid == pid
        for p in procs:
            with contextlib.suppress(psutil.Error):
                p.send_signal(sig)
