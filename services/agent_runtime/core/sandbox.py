"""Runs untrusted Python in a separate, isolated and limited process (the core of the ``python`` tool).

Layers, each enforced where it cannot be undone by the code it limits:
- kernel isolation (``shared.sandbox``, bubblewrap): new user, pid, network, ipc and uts namespaces, no
  network, a filesystem holding only the interpreter and its standard library read-only and a private
  tmpfs working directory, all capabilities dropped, an unprivileged uid, a seccomp filter; where it is
  unavailable the tool is refused with the reason (``PUYU_SANDBOX_ALLOW_UNISOLATED`` for development);
- a fresh interpreter (``-I -S``: no environment, no user or site packages) in its own session;
- kernel resource limits set before the code runs: address space, CPU seconds, file size, open files,
  processes;
- an audit hook (PEP 578) that refuses files outside the working directory, forks, exec, sockets,
  ctypes and tampering with the hook: a second wall inside the first;
- the parent keeps the wall-clock deadline and the output budget, and kills the whole process group.

Every way the code can end (exception, limit, signal, timeout, flood of output) comes back as a
``SandboxResult`` whose ``error`` says what happened.
"""

from __future__ import annotations

import json
import os
import posixpath
import selectors
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from shared.sandbox import Isolation, IsolationUnavailable

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
    workdir_mb: int = 64  # the working directory's tmpfs
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


class Sandbox:
    def __init__(
        self,
        limits: SandboxLimits | None = None,
        python: str | None = None,
        allow_unisolated: bool | None = None,
    ) -> None:
        """``allow_unisolated``: run without kernel isolation where it is unavailable (development only;
        None: the ``PUYU_SANDBOX_ALLOW_UNISOLATED`` environment variable decides, off by default)."""
        self.limits = limits or SandboxLimits()
        self.python = python or sys.executable
        try:
            self.isolation = Isolation(
                self.python,
                user=self.limits.user,
                workdir_mb=self.limits.workdir_mb,
                allow_unisolated=allow_unisolated,
            )
        except IsolationUnavailable as exc:
            raise SandboxError(str(exc)) from None

    def run(self, code: str, files: dict[str, str] | None = None) -> SandboxResult:
        """Run ``code`` in a fresh working directory holding ``files`` (name → text)."""
        try:
            with self.isolation.workdir() as workdir:
                request = {"code": code, "files": {_inside(workdir, n): t for n, t in (files or {}).items()}}
                return self._run_in(workdir, json.dumps(request))
        except IsolationUnavailable as exc:
            raise SandboxError(str(exc)) from None

    def _config(self, workdir: str, report_fd: int) -> str:
        lim = self.limits
        # without kernel isolation (development), the boot switches user itself when started as root
        user_ids = None if self.isolation.isolated else self.isolation.user_ids
        return json.dumps(
            {
                "workdir": workdir,
                "memory_bytes": lim.memory_mb * 2**20,
                "cpu_seconds": lim.cpu_seconds,
                "file_bytes": lim.file_mb * 2**20,
                "max_processes": lim.max_processes,
                "uid": user_ids[0] if user_ids else None,
                "gid": user_ids[1] if user_ids else None,
                "preload": PRELOAD,
                "blocked_imports": BLOCKED_IMPORTS,
                "report_fd": report_fd,
            }
        )

    def _run_in(self, workdir: str, request: str) -> SandboxResult:
        lim = self.limits
        started = time.monotonic()
        report_read, report_write = os.pipe()
        try:
            proc = self.isolation.popen(
                ["-I", "-S", "-B", "-c", BOOT_SOURCE, self._config(workdir, report_write)],
                workdir=workdir,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env={"LANG": "C.UTF-8", "PYTHONIOENCODING": "utf-8"},
                start_new_session=True,  # its own process group: one kill ends every descendant
                pass_fds=(report_write,),
            )
        except OSError as exc:
            os.close(report_read)
            raise SandboxError(f"cannot start the sandbox interpreter {self.python}: {exc}") from exc
        finally:
            os.close(report_write)
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(request.encode("utf-8", "replace"))
            proc.stdin.close()
        except BrokenPipeError:
            pass
        out, reason = self._collect(proc, started)
        if reason is not None:
            _kill_group(proc)
        exit_code = proc.wait()
        if self.isolation.isolated and exit_code > 128:
            exit_code = 128 - exit_code  # bwrap exits with 128 + N when the code died of signal N
        text = out.decode("utf-8", "replace")
        error = reason or _exit_error(exit_code, text, lim)
        return SandboxResult(
            text,
            exit_code,
            error,
            truncated=reason is not None and "output" in reason,
            duration_s=time.monotonic() - started,
            files=_read_report(report_read),
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


def _inside(workdir: str, name: str) -> str:
    path = posixpath.normpath(posixpath.join(workdir, name))
    if not path.startswith(workdir + "/"):
        raise SandboxError(f"file name {name!r} leaves the working directory")
    return path[len(workdir) + 1 :]


def _read_report(fd: int) -> list[str]:
    """The file names the boot reported (none when the code was killed first)."""
    os.set_blocking(fd, False)
    data = bytearray()
    try:
        while chunk := os.read(fd, 65536):
            data += chunk
    except BlockingIOError:  # a writer left behind (without isolation) keeps the pipe open
        pass
    finally:
        os.close(fd)
    try:
        names = json.loads(data) if data else []
    except ValueError:
        return []
    return sorted(n for n in names if isinstance(n, str)) if isinstance(names, list) else []


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
