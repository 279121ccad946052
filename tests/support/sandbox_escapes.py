"""Escape attempts shared by the sandbox tests, and the fixtures they need on the host."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SECRET = "s3cret-of-another-user"

# A world-readable interpreter (Debian's, like the python image's /usr/local/bin/python): the sandbox
# user can read it, so the escape below has every file it needs, as in the container.
WORLD_READABLE_PYTHON = "/usr/bin/python3.11"


def world_readable_python() -> str | None:
    return WORLD_READABLE_PYTHON if os.access(WORLD_READABLE_PYTHON, os.X_OK) else None


def fork_exec_escape(secret_path: str) -> str:
    """The reported escape: ``_posixsubprocess`` loaded past the import hook through ``_imp``, then
    ``fork_exec`` of /bin/sh reading a file of the service (the interpreter itself is tried too)."""
    return f"""
import _imp, os, sys
class Spec:
    name = "_posixsubprocess"
    origin = None
if "_posixsubprocess" in sys.builtin_module_names:
    module = _imp.create_builtin(Spec())
else:
    folder = [p for p in sys.path if p.endswith("lib-dynload")][0]
    Spec.origin = os.path.join(folder, [f for f in os.listdir(folder) if f.startswith("_posixsubprocess")][0])
    module = _imp.create_dynamic(Spec())
for argv in (
    [b"/bin/sh", b"-c", b"cat {secret_path}"],
    [sys.executable.encode(), b"-c", b"print(open({secret_path!r}).read())"],
):
    read_end, write_end = os.pipe()
    err_read, err_write = os.pipe()
    module.fork_exec(
        argv, [argv[0]], True, tuple(sorted((write_end, err_write))), None, None, -1, -1, -1, write_end, -1, write_end,
        err_read, err_write, True, False, -1, None, None, None, -1, None, False,
    )
    os.close(write_end)
    os.close(err_write)
    failure = b""  # what the child reports when exec fails: OSError:<errno in hex>:...
    while chunk := os.read(err_read, 4096):
        failure += chunk
    out = b""
    while chunk := os.read(read_end, 4096):
        out += chunk
    if failure:
        print("spawn failed:", argv[0], failure)
    else:
        print("spawned:", argv[0], out)
"""


@contextmanager
def service_home_with_a_secret() -> Iterator[Path]:
    """A service home holding a session file, readable by every user: only the sandbox's own view of
    the filesystem keeps it from the code (no file permission does)."""
    home = Path(tempfile.mkdtemp(prefix="puyu-home-"))
    try:
        sessions = home / "artifacts" / "sessions"
        sessions.mkdir(parents=True)
        secret = sessions / "session.json"
        secret.write_text(SECRET)
        for path in (home, home / "artifacts", sessions):
            path.chmod(0o755)
        secret.chmod(stat.S_IRUSR | stat.S_IWUSR | stat.S_IRGRP | stat.S_IROTH)
        yield secret
    finally:
        shutil.rmtree(home, ignore_errors=True)
