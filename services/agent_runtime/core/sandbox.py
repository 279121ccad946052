"""Runs untrusted Python in a separate, limited process (the core of the ``python`` tool).

Layers, each enforced where it cannot be undone by the code it limits:
- a fresh interpreter (``-I -S``: no environment, no user or site packages) in its own session, with an
  empty environment and its own temporary working directory, deleted afterwards;
- kernel resource limits set before the code runs: address space, CPU seconds, file size, open files,
  processes; when the service runs as root the process drops to an unprivileged user first;
- an audit hook (PEP 578) that refuses files outside the working directory, forks, exec, sockets,
  ctypes and tampering with the hook;
- the parent keeps the wall-clock deadline and the output budget, and kills the whole process group.

No namespaces or seccomp: they need privileges or packages this service cannot assume. Every way the
code can end (exception, limit, signal, timeout, flood of output) comes back as a ``SandboxResult`` whose
``error`` says what happened.
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

BOOT_SOURCE = (Path(__file__).with_name("sandbox_boot.py")).read_text(encoding="utf-8")

# offered to the code even where the interpreter's files are unreadable after the user switch
PRELOAD = (
    "math cmath decimal fractions statistics random itertools functools operator collections heapq "
    "bisect re string json datetime calendar textwrap dataclasses enum typing copy pprint numbers "
    "array struct base64 hashlib unicodedata time"
).split()
BLOCKED_IMPORTS = (
    "socket _socket ssl _ssl ctypes _ctypes subprocess _posixsubprocess multiprocessing _multiprocessing "
    "pty mmap signal asyncio threading _thread concurrent urllib http ftplib smtplib telnetlib xmlrpc "
    "webbrowser resource gc"
).split()


class SandboxError(RuntimeError):
    """The sandbox itself could not be started (not the code failing: that is a SandboxResult)."""


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 10.0
    cpu_seconds: int = 5
    memory_mb: int = 512
    output_bytes: int = 16_384
    file_mb: int = 16
    max_processes: int = 64
    user: str | int | None = "nobody"  # used only when the service runs as root


@dataclass
class SandboxResult:
    output: str
    exit_code: int | None
    error: str | None = None
    truncated: bool = False
    duration_s: float = 0.0
    files: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None

    def observation(self) -> str:
        """What the model reads: the output, then what went wrong if anything did."""
        parts = [self.output.rstrip("\n")] if self.output.strip() else []
        if self.error:
            parts.append(f"error: {self.error}")
        return "\n".join(parts) or "(no output)"


def _user_ids(user: str | int | None) -> tuple[int | None, int | None]:
    if user is None or os.getuid() != 0:
        return None, None
    import pwd

    try:
        entry = pwd.getpwuid(user) if isinstance(user, int) else pwd.getpwnam(user)
    except KeyError:
        raise SandboxError(f"sandbox user {user!r} does not exist") from None
    return entry.pw_uid, entry.pw_gid


class Sandbox:
    def __init__(self, limits: SandboxLimits | None = None, python: str | None = None) -> None:
        self.limits = limits or SandboxLimits()
        self.python = python or sys.executable
        self._uid, self._gid = _user_ids(self.limits.user)
        stdlib = sysconfig.get_paths()["stdlib"]
        self._readable = [os.path.join(os.path.realpath(stdlib), "")]

    def run(self, code: str, files: dict[str, str] | None = None) -> SandboxResult:
        """Run ``code`` in a fresh working directory holding ``files`` (name → text)."""
        workdir = Path(tempfile.mkdtemp(prefix="puyu-sandbox-"))
        try:
            for name, text in (files or {}).items():
                target = (workdir / name).resolve()
                if workdir.resolve() not in target.parents:
                    raise SandboxError(f"file name {name!r} leaves the working directory")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(text, encoding="utf-8")
            if self._uid is not None:
                for path in [workdir, *workdir.rglob("*")]:
                    os.chown(path, self._uid, self._gid if self._gid is not None else -1)
            result = self._run_in(workdir, code)
            result.files = sorted(str(p.relative_to(workdir)) for p in workdir.rglob("*") if p.is_file())
            return result
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    def _config(self, workdir: Path) -> str:
        lim = self.limits
        return json.dumps(
            {
                "workdir": str(workdir),
                "memory_bytes": lim.memory_mb * 2**20,
                "cpu_seconds": lim.cpu_seconds,
                "file_bytes": lim.file_mb * 2**20,
                "max_processes": lim.max_processes,
                "uid": self._uid,
                "gid": self._gid,
                "preload": PRELOAD,
                "blocked_imports": BLOCKED_IMPORTS,
                "readable": self._readable,
            }
        )

    def _run_in(self, workdir: Path, code: str) -> SandboxResult:
        lim = self.limits
        started = time.monotonic()
        try:
            proc = subprocess.Popen(
                [self.python, "-I", "-S", "-B", "-c", BOOT_SOURCE, self._config(workdir)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                cwd=workdir,
                env={"LANG": "C.UTF-8", "PYTHONIOENCODING": "utf-8"},
                start_new_session=True,  # its own process group: one kill ends every descendant
                close_fds=True,
            )
        except OSError as exc:
            raise SandboxError(f"cannot start the sandbox interpreter {self.python}: {exc}") from exc
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(code.encode("utf-8", "replace"))
            proc.stdin.close()
        except BrokenPipeError:
            pass
        out, reason = self._collect(proc, started)
        if reason is not None:
            _kill_group(proc)
        exit_code = proc.wait()
        text = out.decode("utf-8", "replace")
        error = reason or _exit_error(exit_code, text, lim)
        return SandboxResult(
            text,
            exit_code,
            error,
            truncated=reason is not None and "output" in reason,
            duration_s=time.monotonic() - started,
        )

    def _collect(self, proc: subprocess.Popen[bytes], started: float) -> tuple[bytes, str | None]:
        """Read the output until the process closes it, the deadline passes or the budget is spent."""
        lim = self.limits
        assert proc.stdout is not None
        buf = bytearray()
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        try:
            while True:
                left = lim.timeout_s - (time.monotonic() - started)
                if left <= 0:
                    return bytes(buf), f"timed out after {lim.timeout_s:g} s (wall clock)"
                if not sel.select(timeout=min(left, 0.5)):
                    continue
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    return bytes(buf), None
                buf += chunk
                if len(buf) > lim.output_bytes:
                    del buf[lim.output_bytes :]
                    return bytes(buf), f"output exceeded {lim.output_bytes} bytes; the process was stopped"
        finally:
            sel.close()
            proc.stdout.close()


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()


def _exit_error(code: int, output: str, lim: SandboxLimits) -> str | None:
    if code == 0:
        return None
    if code < 0:
        sig = -code
        if sig in (signal.SIGXCPU, signal.SIGKILL):
            return f"CPU time limit of {lim.cpu_seconds} s exceeded"
        if sig == signal.SIGXFSZ:
            return f"file size limit of {lim.file_mb} MiB exceeded"
        if sig == signal.SIGSEGV:
            return "the process crashed (segmentation fault; possibly the memory limit)"
        return f"killed by signal {signal.Signals(sig).name}"
    if code == 3 and "MemoryError" in output:
        return f"memory limit of {lim.memory_mb} MiB exceeded"
    last = output.strip().splitlines()[-1] if output.strip() else ""
    return f"exit code {code}" + (f": {last}" if last else "")
