"""Kernel isolation for code the platform runs on behalf of users and models (bubblewrap).

Each run starts ``bwrap`` with:
- new user, pid, network, ipc, uts and cgroup namespaces (``--unshare-all --unshare-user``): no
  network interface but loopback (which is down), no other process visible, no System V IPC shared;
  nested user namespaces disabled (``--disable-userns``);
- its own filesystem: the interpreter, its standard library and the shared libraries they load,
  read-only (``view.py``), a minimal ``/dev`` and a private, size-limited tmpfs as the working
  directory; nothing else of the host (the service's home, sessions, artifacts, /etc, /proc, shells);
- uid and gid 65534 inside, every capability dropped, no new privileges, and a seccomp filter
  (``seccomp.py``) refusing mounts, namespaces, tracing, kernel keyrings and modules, BPF, io_uring
  and sockets other than AF_UNIX;
- when the service runs as root, bwrap itself is started as the unprivileged sandbox user (default
  ``nobody``), so the sandbox is that user outside its namespace too; this needs the interpreter to be
  readable by that user (a world-readable Python, as in the container image). Where it is not, bwrap
  runs as root in a new user namespace without capabilities (a warning says so).

The callers keep their own limits (rlimits, wall clock, output budget) and Python-level guards as a
second wall, never as the only one: if bubblewrap is missing or the kernel (or the container's seccomp
profile: see deploy/seccomp) refuses the namespaces, running code is refused with the reason, never
run behind the audit hook alone. ``PUYU_SANDBOX_ALLOW_UNISOLATED=true`` runs it without kernel isolation
instead, for a development machine only (off by default, and a warning says so).
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from shared.errors import Refusal
from shared.sandbox import seccomp
from shared.sandbox.view import InterpreterView, ViewError, describe, reachable

log = logging.getLogger(__name__)

ALLOW_UNISOLATED_ENV = "PUYU_SANDBOX_ALLOW_UNISOLATED"
BWRAP = "bwrap"  # found on PATH
SANDBOX_UID = SANDBOX_GID = 65534  # "nobody" inside the user namespace
_TRUE = {"1", "true", "yes", "on"}


class IsolationUnavailable(Refusal):
    """Code cannot be run here with kernel isolation (and running it without was not allowed)."""


def allow_unisolated_from_env() -> bool:
    return os.environ.get(ALLOW_UNISOLATED_ENV, "").strip().lower() in _TRUE


def resolve_user(user: str | int) -> tuple[int, int]:
    try:
        entry = pwd.getpwuid(user) if isinstance(user, int) else pwd.getpwnam(user)
    except KeyError:
        raise IsolationUnavailable(f"sandbox user {user!r} does not exist") from None
    return entry.pw_uid, entry.pw_gid


class Isolation:
    """Starts ``python ARGS`` isolated; one per interpreter and configuration, safe across threads."""

    def __init__(
        self,
        python: str,
        *,
        user: str | int | None = "nobody",
        workdir_mb: int = 64,
        allow_unisolated: bool | None = None,
        bwrap: str | None = None,
    ) -> None:
        self.python = python
        self.workdir_mb = workdir_mb
        self.allow_unisolated = allow_unisolated_from_env() if allow_unisolated is None else allow_unisolated
        self._bwrap = bwrap or BWRAP
        # the unprivileged host user: bwrap runs as it (isolated) or the code switches to it (not)
        self.user_ids = resolve_user(user) if user is not None and os.geteuid() == 0 else None
        self._lock = threading.Lock()
        self._state: tuple[InterpreterView | None, tuple[int, int] | None, str | None] | None = None

    # ------------------------------------------------------------------ availability

    @property
    def isolated(self) -> bool:
        """True when runs are isolated, False when they run without (allowed); else IsolationUnavailable."""
        view, _, reason = self._probe()
        if view is not None:
            return True
        if self.allow_unisolated:
            return False
        raise IsolationUnavailable(
            f"running code is refused: the sandbox cannot isolate it here ({reason}). Install bubblewrap "
            "(Debian package bubblewrap) where user namespaces are allowed: in a container, run it with "
            "the seccomp profile deploy/seccomp/puyu-sandbox.json (Docker's default profile and "
            "Kubernetes' RuntimeDefault refuse the user namespace bubblewrap makes; see docs/security.md). "
            f"On a development machine only, {ALLOW_UNISOLATED_ENV}=true runs it without kernel isolation"
        )

    def _probe(self) -> tuple[InterpreterView | None, tuple[int, int] | None, str | None]:
        with self._lock:
            if self._state is None:
                self._state = self._try_isolation()
                view, _, reason = self._state
                if view is None and self.allow_unisolated:
                    log.warning(
                        "sandboxed code runs WITHOUT kernel isolation (%s=true): %s",
                        ALLOW_UNISOLATED_ENV,
                        reason,
                    )
            return self._state

    def _try_isolation(self) -> tuple[InterpreterView | None, tuple[int, int] | None, str | None]:
        bwrap = shutil.which(self._bwrap)
        if bwrap is None:
            return None, None, "bubblewrap (bwrap) is not installed"
        self._bwrap = bwrap or BWRAP
        try:
            view = describe(self.python)
        except ViewError as exc:
            return None, None, str(exc)
        host_user = self.user_ids
        if host_user is not None and not all(reachable(p, *host_user) for p in [bwrap, *view.sources()]):
            log.warning(
                "the interpreter %s is not readable by uid %d: the sandbox runs as root in a user namespace "
                "without capabilities instead of as that user (use a world-readable Python to avoid this)",
                view.executable,
                host_user[0],
            )
            host_user = None
        if not seccomp.supported():
            log.warning("no seccomp filter for this architecture: the sandbox relies on namespaces alone")
        workdir = f"/tmp/puyu-sandbox-probe-{secrets.token_hex(4)}"
        try:
            with self._spawn(
                view,
                host_user,
                ["-I", "-S", "-c", "pass"],
                workdir,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            ) as proc:
                _, err = proc.communicate(timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return None, None, f"bwrap could not start: {exc}"
        if proc.returncode != 0:
            lines = err.decode("utf-8", "replace").strip().splitlines()
            return None, None, lines[-1] if lines else f"bwrap exited with {proc.returncode}"
        return view, host_user, None

    # ------------------------------------------------------------------ runs

    @contextlib.contextmanager
    def workdir(self) -> Iterator[str]:
        """A working directory for one run: a tmpfs inside the sandbox (nothing on the host), or a
        temporary directory of the host, removed afterwards, when running without isolation."""
        if self.isolated:
            yield f"/tmp/puyu-sandbox-{secrets.token_hex(6)}"
            return
        path = tempfile.mkdtemp(prefix="puyu-sandbox-")
        try:
            if self.user_ids is not None:
                os.chown(path, *self.user_ids)
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def popen(self, args: Sequence[str], *, workdir: str, **kwargs: Any) -> subprocess.Popen[bytes]:
        """``python ARGS`` in ``workdir`` (from ``workdir()``); ``kwargs`` go to ``subprocess.Popen``."""
        if not self.isolated:
            return subprocess.Popen([self.python, *args], cwd=workdir, **kwargs)
        view, host_user, _ = self._probe()
        assert view is not None
        return self._spawn(view, host_user, args, workdir, **kwargs)

    def _spawn(
        self,
        view: InterpreterView,
        host_user: tuple[int, int] | None,
        args: Sequence[str],
        workdir: str,
        **kwargs: Any,
    ) -> subprocess.Popen[bytes]:
        argv = [
            self._bwrap,
            "--unshare-all",
            "--unshare-user",
            "--disable-userns",
            "--die-with-parent",
            "--cap-drop",
            "ALL",
            "--uid",
            str(SANDBOX_UID),
            "--gid",
            str(SANDBOX_GID),
            "--hostname",
            "sandbox",
            *view.bwrap_args(),
            "--dev",
            "/dev",
            "--size",
            str(self.workdir_mb * 2**20),
            "--tmpfs",
            workdir,
            "--chdir",
            workdir,
        ]
        pass_fds = tuple(kwargs.pop("pass_fds", ()))
        filter_fd = None
        if seccomp.supported():
            filter_fd, write_end = os.pipe()  # bwrap reads the filter from it; small enough for the buffer
            with os.fdopen(write_end, "wb") as out:
                out.write(seccomp.build_filter())
            argv += ["--seccomp", str(filter_fd)]
            pass_fds += (filter_fd,)
        if host_user is not None:
            kwargs.update(user=host_user[0], group=host_user[1], extra_groups=[])
        argv += ["--", view.executable, *args]
        try:
            # cwd "/": the service's own folder may be closed to the sandbox user
            return subprocess.Popen(argv, pass_fds=pass_fds, cwd="/", **kwargs)
        finally:
            if filter_fd is not None:
                os.close(filter_fd)
