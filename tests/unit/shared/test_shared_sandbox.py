"""The kernel wall alone: plain ``python -c`` code run through ``shared.sandbox.Isolation`` (no audit hook,
no guard), with the service's interpreter and with a world-readable one, as root and as an unprivileged
service user: the reported escape, the network, the host's files, the uid and the seccomp filter."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from shared.sandbox import Isolation, IsolationUnavailable
from shared.sandbox.seccomp import build_filter
from tests.support.sandbox_escapes import (
    SECRET,
    fork_exec_escape,
    service_home_with_a_secret,
    world_readable_python,
)

REPO = Path(__file__).resolve().parents[3]
PYTHONS = [pytest.param(sys.executable, id="service-python")] + (
    [pytest.param(world_readable_python(), id="world-readable-python")] if world_readable_python() else []
)


def run(isolation: Isolation, code: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    with isolation.workdir() as workdir:
        proc = isolation.popen(
            ["-I", "-S", "-c", code],
            workdir=workdir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={"LANG": "C.UTF-8"},
        )
        out, _ = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out.decode("utf-8", "replace"))


@pytest.fixture(scope="module", params=PYTHONS)
def isolation(request: pytest.FixtureRequest) -> Isolation:
    sandbox = Isolation(request.param, allow_unisolated=False)
    assert sandbox.isolated  # `make test` installs bubblewrap: a missing one fails here, with the reason
    return sandbox


def test_the_reported_fork_exec_escape_finds_no_shell_and_no_session_file(isolation: Isolation) -> None:
    with service_home_with_a_secret() as secret:
        result = run(isolation, fork_exec_escape(str(secret)))
    assert SECRET not in result.stdout, result.stdout
    assert "spawn failed: b'/bin/sh' b'OSError:2:" in result.stdout  # ENOENT: no shell in the view
    # the interpreter itself can be started, inside the same walls: the session file does not exist there
    assert "FileNotFoundError" in result.stdout, result.stdout


def test_the_escape_is_real_without_the_kernel_wall() -> None:
    """The control: the same code, where isolation is explicitly allowed to be missing, reads the file."""
    unisolated = Isolation(sys.executable, bwrap="/nonexistent/bwrap", allow_unisolated=True)
    with service_home_with_a_secret() as secret:
        result = run(unisolated, fork_exec_escape(str(secret)))
    assert f"spawned: b'/bin/sh' b'{SECRET}'" in result.stdout, result.stdout


def test_no_network_even_to_a_listening_port_of_the_host(isolation: Isolation) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    code = (
        "import _socket\n"
        "for family, address in ((_socket.AF_INET, ('127.0.0.1', PORT)), (_socket.AF_INET6, ('::1', PORT))):\n"
        "    try:\n"
        "        s = _socket.socket(family, _socket.SOCK_STREAM)\n"
        "        s.settimeout(2)\n"
        "        s.connect(address)\n"
        "        print('connected', family)\n"
        "    except OSError as exc:\n"
        "        print('refused', family, exc)\n"
        "a, b = _socket.socketpair()\n"  # AF_UNIX within the sandbox stays possible
        "a.send(b'x')\n"
        "print('unix', b.recv(1))\n"
    ).replace("PORT", str(port))
    result = run(isolation, code)
    assert "connected" not in result.stdout and result.stdout.count("refused") == 2, result.stdout
    assert "Operation not permitted" in result.stdout  # the seccomp filter, before the empty namespace
    assert "unix b'x'" in result.stdout
    listener.settimeout(0.2)
    with pytest.raises(TimeoutError):
        listener.accept()
    listener.close()


def test_files_of_the_host_outside_the_view_are_invisible(isolation: Isolation) -> None:
    host_paths = [
        str(REPO),
        "/etc/passwd",
        "/etc/hostname",
        "/proc/self/environ",
        "/var",
        "/bin/sh",
        "/usr/bin/env",
    ]
    host_paths += [str(p) for p in Path.home().iterdir()][:5]
    assert all(os.path.exists(p) for p in host_paths)
    code = (
        "import os, json, sys\n"
        "paths = PATHS\n"
        "print(json.dumps({'root': sorted(os.listdir('/')), 'seen': [p for p in paths if os.path.exists(p)],\n"
        "                  'uid': os.getuid(), 'gid': os.getgid(), 'cwd': os.getcwd()}))\n"
        "try:\n"
        "    open(os.path.join(os.path.dirname(os.__file__), 'planted.py'), 'w')\n"
        "except OSError as exc:\n"
        "    print('stdlib write:', exc.strerror)\n"
    ).replace("PATHS", repr(host_paths))
    result = run(isolation, code)
    facts = json.loads(result.stdout.splitlines()[0])
    assert facts["seen"] == [], facts
    assert set(facts["root"]) <= {"dev", "etc", "lib", "lib32", "lib64", "libx32", "root", "tmp", "usr"}
    assert facts["uid"] == facts["gid"] == 65534
    assert facts["cwd"].startswith("/tmp/puyu-sandbox-") and not os.path.exists(facts["cwd"])
    assert "stdlib write: Read-only file system" in result.stdout


def test_the_working_directory_is_a_small_private_tmpfs(isolation: Isolation) -> None:
    small = Isolation(isolation.python, workdir_mb=1, allow_unisolated=False)
    result = run(small, "open('big', 'wb').write(b'x' * 2 * 2**20)")
    assert "No space left on device" in result.stdout


def test_seccomp_refuses_namespaces_mounts_and_tracing(isolation: Isolation) -> None:
    code = (
        "import ctypes, os\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "for name, args in (('unshare', (0x10000000,)), ('unshare', (0x40000000,)), ('setns', (0, 0)),\n"
        "                   ('mount', (b'none', b'/tmp', b'tmpfs', 0, None)), ('ptrace', (16, 1, 0, 0)),\n"
        "                   ('syscall', (321, 0, 0, 0)), ('syscall', (425, 1, 0))):\n"  # bpf, io_uring_setup
        "    print(name, getattr(libc, name)(*args), os.strerror(ctypes.get_errno()))\n"
        "pid = os.fork()\n"  # plain processes and threads still work
        "if pid == 0:\n"
        "    os._exit(7)\n"
        "print('fork', os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))\n"
    )
    result = run(isolation, code)
    assert result.stdout.count("-1 Operation not permitted") == 7, result.stdout
    assert "fork 7" in result.stdout
    assert build_filter("aarch64") != build_filter("x86_64")


@pytest.mark.skipif(
    os.geteuid() != 0, reason="the switch to the sandbox user happens when the service is root"
)
def test_as_root_with_a_world_readable_python_bwrap_runs_as_the_unprivileged_user() -> None:
    python = world_readable_python()
    if python is None:
        pytest.skip("no world-readable python here")
    sandbox = Isolation(python, allow_unisolated=False)
    with sandbox.workdir() as workdir:
        proc = sandbox.popen(["-I", "-S", "-c", "import time; time.sleep(30)"], workdir=workdir)
        try:
            statuses = _statuses_of_tree(proc.pid)
        finally:
            proc.kill()
            proc.wait()
    assert statuses and all(s["Uid"].split()[0] == "65534" for s in statuses), statuses
    code = [s for s in statuses if s["Name"].startswith("python")]
    assert code and code[0]["CapEff"] == "0000000000000000" and code[0]["NoNewPrivs"] == "1"
    assert code[0]["Seccomp"] == "2"  # filter mode


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to start a process as another user")
def test_a_service_running_as_an_unprivileged_user_gets_the_same_walls() -> None:
    """As in the container (the service's own user, not root): the shared package and a world-readable
    interpreter, run by uid 65534 with nothing of the checkout readable."""
    python = world_readable_python()
    if python is None:
        pytest.skip("no world-readable python here")
    copy = Path(tempfile.mkdtemp(prefix="puyu-unprivileged-"))
    try:
        (copy / "shared").mkdir()
        for name in ("__init__.py", "errors.py"):
            shutil.copy(REPO / "shared" / name, copy / "shared" / name)
        shutil.copytree(REPO / "shared" / "sandbox", copy / "shared" / "sandbox")
        for path in [copy, *copy.rglob("*")]:
            path.chmod(0o755)
        with service_home_with_a_secret() as secret:
            script = (
                f"import subprocess, sys\nsys.path.insert(0, {str(copy)!r})\n"
                "from shared.sandbox import Isolation\n"
                f"iso = Isolation({python!r}, allow_unisolated=False)\n"
                "assert iso.isolated\n"
                "with iso.workdir() as wd:\n"
                f"    p = iso.popen(['-I', '-S', '-c', {fork_exec_escape(str(secret))!r}], workdir=wd,\n"
                "                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT)\n"
                "    print(p.communicate(timeout=30)[0].decode())\n"
            )
            result = subprocess.run(
                [python, "-I", "-c", script],
                cwd=copy,
                user=65534,
                group=65534,
                extra_groups=[],
                env={"PYTHONPATH": str(copy), "PATH": "/usr/bin:/bin"},
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
    finally:
        shutil.rmtree(copy, ignore_errors=True)
    assert result.returncode == 0, result.stderr
    assert SECRET not in result.stdout and "spawn failed: b'/bin/sh'" in result.stdout, result.stdout


def test_refused_with_the_reason_when_bubblewrap_is_missing_unless_allowed() -> None:
    missing = Isolation(sys.executable, bwrap="/nonexistent/bwrap", allow_unisolated=False)
    with pytest.raises(
        IsolationUnavailable, match=r"bubblewrap \(bwrap\) is not installed.*ALLOW_UNISOLATED"
    ):
        assert missing.isolated
    with pytest.raises(IsolationUnavailable):
        with missing.workdir():
            pass
    allowed = Isolation(sys.executable, bwrap="/nonexistent/bwrap", allow_unisolated=True)
    assert allowed.isolated is False
    result = run(allowed, "print('ran')")
    assert result.stdout == "ran\n"


def test_the_opt_out_is_off_unless_the_environment_says_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PUYU_SANDBOX_ALLOW_UNISOLATED", raising=False)
    assert Isolation(sys.executable).allow_unisolated is False
    monkeypatch.setenv("PUYU_SANDBOX_ALLOW_UNISOLATED", "true")
    assert Isolation(sys.executable).allow_unisolated is True


def _statuses_of_tree(pid: int) -> list[dict[str, str]]:
    """/proc status of ``pid`` and its descendants once the sandboxed python has started."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        pids, statuses = [pid], []
        while pids:
            current = pids.pop()
            try:
                text = Path(f"/proc/{current}/status").read_text()
                children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
            except OSError:
                continue
            statuses.append(dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line))
            pids += [int(c) for c in children]
        statuses = [{k: v.strip() for k, v in s.items()} for s in statuses]
        if any(s["Name"].startswith("python") for s in statuses):
            return statuses
        time.sleep(0.05)
    return []
