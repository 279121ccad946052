"""puyu's own CPU kernels (C++ sources next to their callers), built at first use and loaded as torch ops.

Each is compiled by ``torch.utils.cpp_extension.load`` (the system C++ compiler and ninja) into
``$PUYU_KERNEL_CACHE`` (default ``~/.cache/puyu/torch_extensions``, or the temporary folder where
that is not writable), one folder per kernel, torch version and source (a hash of it and its flags), so a later process
loads the built library in milliseconds. A kernel is loaded only where the CPU has the instruction
sets it is compiled for; where it lacks them, or the build fails (no compiler: the warning names the
compiler's first error lines), ``load`` returns False once and its callers keep their torch path:
a kernel never breaks serving. ``PUYU_NATIVE_OPS=off`` turns every kernel off.

The ops register in the ``puyu`` namespace with ``TORCH_LIBRARY_FRAGMENT`` (several libraries share it).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import platform
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)

STALE_LOCK_S = 600  # a build's lock older than this was left by a process that died while building
_lock = threading.Lock()
_loaded: dict[str, bool] = {}


@dataclass(frozen=True)
class NativeOp:
    """C++ sources built into one library, the CPU flags they need (as /proc/cpuinfo names them) and
    their compiler flags."""

    name: str  # the library's name; the ops' own names are the sources' business
    sources: tuple[Path, ...]
    cpu_flags: tuple[str, ...]
    cflags: tuple[str, ...]
    what: str  # for log lines: what the callers do without it


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (x86-64 Linux); empty elsewhere."""
    return _cpu_flags()


@functools.cache
def _cpu_flags() -> frozenset[str]:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return frozenset()
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def disabled() -> bool:
    return os.environ.get("PUYU_NATIVE_OPS", "").lower() in ("0", "off", "false", "no")


def load(op: NativeOp) -> bool:
    """Build (once per machine) and load ``op``'s library; False where it cannot run here (logged once)."""
    if op.name in _loaded:
        return _loaded[op.name]
    with _lock:
        if op.name not in _loaded:
            _loaded[op.name] = _load(op)
    return _loaded[op.name]


def _load(op: NativeOp) -> bool:
    if disabled():
        log.info("%s off (PUYU_NATIVE_OPS): %s", op.name, op.what)
        return False
    missing = [flag for flag in op.cpu_flags if flag not in cpu_flags()]
    if missing:
        log.info("this CPU lacks %s for %s: %s", ", ".join(missing), op.name, op.what)
        return False
    started = time.monotonic()
    try:
        from torch.utils import cpp_extension

        build = _build_directory(op)
        _clear_stale_lock(build)
        cpp_extension.load(
            name=op.name,
            sources=[str(source) for source in op.sources],
            extra_cflags=list(op.cflags),
            extra_ldflags=["-fopenmp"] if "-fopenmp" in op.cflags else [],
            build_directory=str(build),
            is_python_module=False,
        )
    except Exception as error:  # a missing compiler or ninja, a compile error: never breaks serving
        text = str(error)
        lines = [line.strip() for line in text.splitlines() if "error:" in line or "fatal" in line]
        log.warning("%s did not build (%s): %s", op.name, " | ".join(lines[:4]) or text[-500:], op.what)
        return False
    log.info("%s ready (%.1f s)", op.name, time.monotonic() - started)
    return True


def _build_directory(op: NativeOp) -> Path:
    version = torch.__version__.replace("+", "_")
    code = b"".join(source.read_bytes() for source in op.sources)
    digest = hashlib.sha256(code + " ".join(op.cflags).encode()).hexdigest()[:12]
    root = os.environ.get("PUYU_KERNEL_CACHE")
    candidates = [Path(root)] if root else []
    candidates += [
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "puyu" / "torch_extensions",
        Path(tempfile.gettempdir()) / f"puyu-torch-extensions-{os.getuid()}",
    ]
    for candidate in candidates:
        path = candidate / f"{op.name}-torch-{version}-{digest}"
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(path, os.W_OK):
            return path
    raise OSError(f"no writable folder for {op.name}'s build among {[str(c) for c in candidates]}")


def _clear_stale_lock(build: Path) -> None:
    # cpp_extension waits as long as its lock file exists; a process killed mid-build leaves it behind
    lock = build / "lock"
    try:
        if time.time() - lock.stat().st_mtime > STALE_LOCK_S:
            lock.unlink()
            log.warning("removed a stale build lock %s", lock)
    except OSError:
        pass
