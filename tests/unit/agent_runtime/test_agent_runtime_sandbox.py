"""Escape attempts against the python sandbox: each ends cleanly with an error the agent sees."""

from __future__ import annotations

import os
import socket
import sys

import pytest

from services.agent_runtime.core import sandbox as sandbox_module
from services.agent_runtime.core.sandbox import Sandbox, SandboxError, SandboxLimits
from services.agent_runtime.core.tools import PythonInterpreter, ToolError
from shared.sandbox import isolation as isolation_module
from tests.support.sandbox_escapes import (
    SECRET,
    fork_exec_escape,
    service_home_with_a_secret,
    world_readable_python,
)

LIMITS = SandboxLimits(timeout_s=3.0, cpu_seconds=1, memory_mb=256, output_bytes=4096, file_mb=1)
# every escape runs with the service's interpreter and with a world-readable one, which the sandbox user
# can read: as root, bwrap then starts as that unprivileged user (as the service's own user in the image)
PYTHONS = [pytest.param(sys.executable, id="service-python")] + (
    [pytest.param(world_readable_python(), id="world-readable-python")] if world_readable_python() else []
)


@pytest.fixture(scope="module", params=PYTHONS)
def sandbox(request: pytest.FixtureRequest) -> Sandbox:
    return Sandbox(LIMITS, python=request.param, allow_unisolated=False)


def test_runs_code_and_prints_the_last_expression(sandbox: Sandbox) -> None:
    result = sandbox.run("import math, statistics\nprint('total', sum(range(101)))\nmath.comb(10, 3)")
    assert result.ok and result.exit_code == 0
    assert result.output == "total 5050\n120\n"
    assert sandbox.run("x = 1").observation() == "(no output)"


def test_has_its_own_working_directory_removed_afterwards(sandbox: Sandbox) -> None:
    result = sandbox.run("import os\nopen('notes.txt', 'w').write('kept')\nprint(os.getcwd())")
    workdir = result.output.strip()
    assert result.ok and "puyu-sandbox-" in workdir and result.files == ["notes.txt"]
    assert not os.path.exists(workdir)
    other = sandbox.run("import os\nprint(os.getcwd(), os.listdir('.'))")
    assert other.output.split()[0] != workdir and "[]" in other.output


def test_exceptions_come_back_as_the_error_with_a_user_traceback(sandbox: Sandbox) -> None:
    result = sandbox.run("def f():\n    return 1 / 0\nf()")
    assert result.error == "exit code 1: ZeroDivisionError: division by zero"
    assert 'File "<code>", line 2, in f' in result.output and "sandbox_boot" not in result.output
    assert "SyntaxError" in (sandbox.run("def (").error or "")


@pytest.mark.parametrize(
    "code",
    [
        "print(open('/etc/passwd').read())",
        "import os\nprint(os.read(os.open('/etc/hostname', os.O_RDONLY), 100))",
        "import os\nprint(os.listdir('/'))",
        "print(open('../../etc/passwd').read())",
        "import os\nos.symlink('/etc/passwd', 'link')\nprint(open('link').read())",
        f"print(open({__file__!r}).read())",
        "open('/tmp/puyu-sandbox-escape', 'w').write('x')",
    ],
)
def test_files_outside_its_directory_are_refused(sandbox: Sandbox, code: str) -> None:
    result = sandbox.run(code)
    assert not result.ok and "outside the working directory is not allowed" in (result.error or "")
    assert "root:" not in result.output and not os.path.exists("/tmp/puyu-sandbox-escape")


def test_network_is_refused(sandbox: Sandbox) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    for code in (
        f"import socket\nsocket.create_connection(('127.0.0.1', {port}))",
        "import _socket",
        "import urllib.request\nurllib.request.urlopen('http://127.0.0.1/')",
    ):
        result = sandbox.run(code)
        assert not result.ok and "is not available" in (result.error or ""), code
    listener.settimeout(0.2)  # a connection made above would wait in the backlog
    with pytest.raises(TimeoutError):
        listener.accept()
    listener.close()


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("import os\nwhile True:\n    os.fork()", "os.fork is not allowed"),
        ("import os\nos.system('echo hi')", "os.system is not allowed"),
        ("import subprocess", "module 'subprocess' is not available"),
        ("import os\nos.execv('/bin/sh', ['sh'])", "os.exec is not allowed"),
        ("import os\nos.posix_spawn('/bin/sh', ['sh'], {})", "os.posix_spawn is not allowed"),
        ("import ctypes", "module 'ctypes' is not available"),
        # another hook cannot switch the sandbox's off
        (
            "import sys\nsys.addaudithook(lambda *a: None)\nopen('/etc/passwd')",
            "outside the working directory",
        ),
        ("import sys\nr = sys.modules['resource']\nr.setrlimit(r.RLIMIT_AS, (-1, -1))", "resource.setrlimit"),
    ],
)
def test_processes_and_native_code_are_refused(sandbox: Sandbox, code: str, message: str) -> None:
    result = sandbox.run(code)
    assert not result.ok and message in (result.error or "")


def test_unbounded_allocation_hits_the_memory_limit(sandbox: Sandbox) -> None:
    for code in (
        "x = bytearray(10 ** 11)",
        "chunks = []\nwhile True:\n    chunks.append(bytearray(10 ** 7))",
    ):
        result = sandbox.run(code)
        assert result.error == "memory limit of 256 MiB exceeded", result.output


def test_endless_loops_are_stopped(sandbox: Sandbox) -> None:
    busy = sandbox.run("while True:\n    pass")
    # on a loaded machine the wall clock may pass before a CPU second is used: either limit is clean
    assert busy.error in ("CPU time limit of 1 s exceeded", "timed out after 3 s (wall clock)")
    idle = sandbox.run("import time\ntime.sleep(60)")
    assert idle.error == "timed out after 3 s (wall clock)" and idle.duration_s < 10


def test_printing_gigabytes_is_cut_at_the_output_budget(sandbox: Sandbox) -> None:
    result = sandbox.run("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)")
    assert result.truncated and len(result.output) == 4096
    assert result.error == "output exceeded 4096 bytes; the process was stopped"
    big = sandbox.run("open('big.bin', 'w').write('x' * (8 * 2 ** 20))")
    assert "File too large" in (big.error or "")


@pytest.mark.skipif(os.getuid() != 0, reason="the user switch happens only when the service runs as root")
def test_runs_as_an_unprivileged_user_when_root(sandbox: Sandbox) -> None:
    assert sandbox.run("import os\nos.getuid()").output.strip() != "0"


def test_python_tool_observation_and_argument_errors(sandbox: Sandbox) -> None:
    tool = PythonInterpreter(sandbox)
    assert tool.run({"code": "```python\nprint(6 * 7)\n```"}) == "42"
    assert tool.run({"code": "open('/etc/passwd')"}).endswith(
        "error: exit code 1: PermissionError: sandbox: access to '/etc/passwd' outside the working "
        "directory is not allowed"
    )
    with pytest.raises(ToolError, match="non-empty Python source"):
        tool.run({"code": "  "})


@pytest.mark.parametrize("python", PYTHONS)
def test_the_fork_exec_escape_is_stopped_by_the_kernel_with_the_audit_hook_off(
    python: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    boot = sandbox_module.BOOT_SOURCE
    assert boot.count("sys.addaudithook(_hook)") == 1
    monkeypatch.setattr(sandbox_module, "BOOT_SOURCE", boot.replace("sys.addaudithook(_hook)", "pass"))
    unhooked = Sandbox(LIMITS, python=python, allow_unisolated=False)
    with service_home_with_a_secret() as secret:
        escape = unhooked.run(fork_exec_escape(str(secret)))
        hooked_off = unhooked.run(f"print(open({str(secret)!r}).read())")
    assert SECRET not in escape.output and "spawn failed: b'/bin/sh' b'OSError:2:" in escape.output, escape
    assert "FileNotFoundError" in (hooked_off.error or ""), hooked_off  # the hook did not refuse it: absent
    listener = socket.create_server(("127.0.0.1", 0))
    network = unhooked.run(
        f"import _socket\ns = _socket.socket()\ns.settimeout(2)\ns.connect(('127.0.0.1', {listener.getsockname()[1]}))"
    )
    listener.close()
    assert "PermissionError: [Errno 1] Operation not permitted" in (network.error or ""), network
    seen = unhooked.run("import os\nsorted(os.listdir('/')), os.getuid(), os.path.exists('/etc/passwd')")
    assert "'home'" not in seen.output and "65534, False" in seen.output, seen


@pytest.mark.parametrize("python", PYTHONS)
def test_the_fork_exec_escape_with_the_audit_hook_on(python: str) -> None:
    with service_home_with_a_secret() as secret:
        result = Sandbox(LIMITS, python=python, allow_unisolated=False).run(fork_exec_escape(str(secret)))
    assert SECRET not in result.output, result


def test_input_files_arrive_and_names_leaving_the_directory_are_refused(sandbox: Sandbox) -> None:
    result = sandbox.run("print(open('in/args.json').read())", {"in/args.json": '{"x": 1}'})
    assert result.output == '{"x": 1}\n' and result.files == ["in/args.json"]
    with pytest.raises(SandboxError, match="leaves the working directory"):
        sandbox.run("pass", {"../escape.txt": "x"})


def test_the_tool_is_refused_with_the_reason_where_isolation_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(isolation_module, "BWRAP", "/nonexistent/bwrap")
    tool = PythonInterpreter(Sandbox(LIMITS, allow_unisolated=False))
    with pytest.raises(
        ToolError, match=r"python: running code is refused.*bubblewrap \(bwrap\) is not installed"
    ):
        tool.run({"code": "print(1)"})
    assert PythonInterpreter(Sandbox(LIMITS, allow_unisolated=True)).run({"code": "print(6 * 7)"}) == "42"
