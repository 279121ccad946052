"""The filesystem a sandboxed interpreter sees: its binary, its standard library and the shared libraries
they load, read-only, and nothing else of the host (no /etc, /home, /root, /var, /proc, no shells).

What an interpreter needs is asked of it once, outside any sandbox, by a fixed script: it imports every
extension module of its standard library and reports the files the dynamic loader mapped. The view
binds the folders holding those libraries, mirrors the symbolic links on the way to the ELF loader
(``/lib64`` -> ``usr/lib64`` on merged-/usr systems) and hides a ``site-packages`` inside the standard
library behind an empty read-only folder.
"""

from __future__ import annotations

import functools
import json
import os
import stat
import struct
import subprocess
from dataclasses import dataclass

# runs in the interpreter described, with -I -S: trusted code, no sandbox
_DESCRIBE = r"""
import json, os, sys, sysconfig
paths = sysconfig.get_paths()
dynload = [p for p in sys.path if p.endswith("lib-dynload") and os.path.isdir(p)]
for folder in dynload:
    for name in sorted(os.listdir(folder)):
        if name.endswith(".so") and not name.startswith(("_test", "_xx", "_ctypes_test")):
            try:
                __import__(name.split(".")[0])
            except BaseException:
                pass
libraries = set()
with open("/proc/self/maps") as maps:
    for line in maps:
        parts = line.split(None, 5)
        if len(parts) == 6 and parts[5].startswith("/") and ".so" in parts[5]:
            libraries.add(parts[5].strip())
print(json.dumps({
    "executable": os.path.realpath(sys.executable),
    "stdlib": sorted({os.path.realpath(paths["stdlib"]), os.path.realpath(paths["platstdlib"])}),
    "libraries": sorted(libraries),
}))
"""

_LOADER_LINKS = ("/lib", "/lib32", "/lib64", "/libx32")
_LD_CACHE = "/etc/ld.so.cache"


class ViewError(RuntimeError):
    """The interpreter could not be described (missing, not a Python 3, not runnable)."""


@dataclass(frozen=True)
class InterpreterView:
    executable: str
    stdlib: tuple[str, ...]
    folders: tuple[str, ...]  # library folders, parents before children
    links: tuple[tuple[str, str], ...]  # (target, path) symbolic links to recreate
    hidden: tuple[str, ...]  # folders inside the view replaced by an empty one

    def bwrap_args(self) -> list[str]:
        args: list[str] = []
        for target, path in self.links:
            args += ["--symlink", target, path]
        for folder in self.folders:
            args += ["--ro-bind", folder, folder]
        if os.path.isfile(_LD_CACHE):  # where the loader finds libraries outside its default folders
            args += ["--ro-bind", _LD_CACHE, _LD_CACHE]
        args += ["--ro-bind", self.executable, self.executable]
        for path in self.hidden:
            args += ["--size", "4096", "--tmpfs", path, "--remount-ro", path]
        return args

    def sources(self) -> list[str]:
        """Every host path the view reads (for checking that an unprivileged user can reach them)."""
        return [*self.folders, self.executable, *([_LD_CACHE] if os.path.isfile(_LD_CACHE) else [])]


@functools.lru_cache(maxsize=8)
def describe(python: str) -> InterpreterView:
    """The view for the interpreter ``python`` (a path or a name on PATH); cached per interpreter."""
    try:
        probe = subprocess.run(
            [python, "-I", "-S", "-c", _DESCRIBE],
            capture_output=True,
            stdin=subprocess.DEVNULL,
            timeout=60,
            check=False,
            env={"LANG": "C.UTF-8"},
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ViewError(f"cannot run the interpreter {python}: {exc}") from exc
    if probe.returncode != 0:
        tail = probe.stderr.decode("utf-8", "replace").strip().splitlines()[-1:]
        raise ViewError(f"cannot describe the interpreter {python}: {tail[0] if tail else probe.returncode}")
    info = json.loads(probe.stdout)
    stdlib = _outermost(info["stdlib"])
    folders = _outermost([*stdlib, *{os.path.dirname(lib) for lib in info["libraries"]}])
    links: list[tuple[str, str]] = []
    for path in _LOADER_LINKS:
        if os.path.islink(path):
            links.append((os.readlink(path), path))
    loader = _elf_interpreter(info["executable"])
    if loader:
        _mirror_links(loader, links)
    hidden = tuple(
        os.path.join(folder, "site-packages")
        for folder in stdlib
        if os.path.isdir(os.path.join(folder, "site-packages"))
    )
    return InterpreterView(
        info["executable"], tuple(stdlib), tuple(folders), tuple(dict.fromkeys(links)), hidden
    )


def reachable(path: str, uid: int, gid: int) -> bool:
    """Whether ``uid``/``gid`` (with no other groups) may read ``path``, checking every folder above it."""
    parts = os.path.abspath(path).split(os.sep)
    for depth in range(1, len(parts) + 1):
        current = os.sep.join(parts[:depth]) or os.sep
        try:
            st = os.stat(current)
        except OSError:
            return False
        need = (stat.S_IXUSR, stat.S_IXGRP, stat.S_IXOTH) if stat.S_ISDIR(st.st_mode) else ()
        if depth == len(parts):
            need = (stat.S_IRUSR, stat.S_IRGRP, stat.S_IROTH)
        if need:
            bit = need[0] if st.st_uid == uid else need[1] if st.st_gid == gid else need[2]
            if not st.st_mode & bit:
                return False
    return True


def _outermost(paths: list[str]) -> list[str]:
    """The folders, without those inside another, parents first."""
    kept: list[str] = []
    for path in sorted(set(paths), key=len):
        if not any(path == k or path.startswith(k.rstrip(os.sep) + os.sep) for k in kept):
            kept.append(path)
    return kept


def _elf_interpreter(executable: str) -> str | None:
    """The program interpreter (PT_INTERP) of a 64-bit little-endian ELF binary, or None."""
    try:
        with open(executable, "rb") as f:
            head = f.read(64)
            if head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
                return None
            (phoff,) = struct.unpack_from("<Q", head, 0x20)
            phentsize, phnum = struct.unpack_from("<HH", head, 0x36)
            f.seek(phoff)
            table = f.read(phentsize * phnum)
            for i in range(phnum):
                (kind,) = struct.unpack_from("<I", table, i * phentsize)
                if kind == 3:  # PT_INTERP
                    offset, _, _, size = struct.unpack_from("<QQQQ", table, i * phentsize + 8)
                    f.seek(offset)
                    return f.read(size).rstrip(b"\0").decode()
    except (OSError, struct.error, UnicodeDecodeError):
        return None
    return None


def _mirror_links(path: str, links: list[tuple[str, str]], depth: int = 0) -> None:
    """Record the symbolic links met on the way to ``path`` so that it resolves inside the view."""
    if depth > 16:
        return
    parts = os.path.normpath(path).split(os.sep)
    for i in range(2, len(parts) + 1):
        current = os.sep.join(parts[:i])
        if os.path.islink(current):
            target = os.readlink(current)
            links.append((target, current))
            rest = os.sep.join(parts[i:])
            resolved = os.path.normpath(os.path.join(os.path.dirname(current), target, rest))
            _mirror_links(resolved, links, depth + 1)
            return
