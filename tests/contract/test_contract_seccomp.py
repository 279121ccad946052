"""deploy/seccomp/puyu-sandbox.json, the seccomp profile of the containers that run the code sandbox
(agent runtime, evaluator): Docker's default profile plus what bubblewrap needs, nothing more.

The profiles are compiled with libseccomp as the container runtimes compile them, for the
capabilities compose (Docker's defaults) and Kubernetes (all dropped) give, and a real bubblewrap
sandbox is started under them, as the container's unprivileged user with a world-readable
interpreter where there is one: under Docker's default it is refused with the reason; under ours it
runs, and the reported fork_exec escape still finds no shell and no file of the service.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.sandbox_escapes import (
    SECRET,
    fork_exec_escape,
    service_home_with_a_secret,
    world_readable_python,
)
from tests.support.seccomp_profiles import DOCKER_DEFAULT_CAPS, loader

ROOT = Path(__file__).resolve().parents[2]
SECCOMP = ROOT / "deploy" / "seccomp"
SANDBOXED = ("agent-runtime", "evaluator")  # the services that run model-written code
CAPS = {"compose": DOCKER_DEFAULT_CAPS, "kubernetes": frozenset()}  # k8s: capabilities drop ALL


def _generator() -> Any:
    spec = importlib.util.spec_from_file_location("seccomp_generate", SECCOMP / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GENERATE = _generator()
DOCKER_DEFAULT = json.loads((SECCOMP / "docker-default.json").read_text())
PUYU = json.loads((SECCOMP / "puyu-sandbox.json").read_text())


def test_the_profile_is_generated_and_is_dockers_default_plus_the_bwrap_rules() -> None:
    assert (SECCOMP / "puyu-sandbox.json").read_text() == GENERATE.render(), (
        "rerun deploy/seccomp/generate.py"
    )
    base = DOCKER_DEFAULT["syscalls"]
    assert {k: v for k, v in PUYU.items() if k != "syscalls"} == {
        k: v for k, v in DOCKER_DEFAULT.items() if k != "syscalls"
    }
    assert PUYU["syscalls"][: len(base)] == base
    added = PUYU["syscalls"][len(base) :]
    assert {n for rule in added for n in rule["names"]} == {
        "clone",
        "unshare",
        "mount",
        "umount2",
        "pivot_root",
        "sethostname",
    }
    assert all(rule["action"] == "SCMP_ACT_ALLOW" and rule["comment"].startswith("puyu:") for rule in added)


@pytest.fixture(scope="module")
def container_like() -> Iterator[tuple[list[str], dict[str, Any]]]:
    """How to start a process as the container's service would run: the shared package alone and a
    world-readable interpreter, as an unprivileged user (root with the service's interpreter where no
    world-readable one exists)."""
    python = world_readable_python()
    if python is None:
        yield [sys.executable], {"env": {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}}
        return
    folder = Path(tempfile.mkdtemp(prefix="puyu-seccomp-"))
    try:
        (folder / "shared").mkdir()
        for name in ("__init__.py", "errors.py"):
            shutil.copy(ROOT / "shared" / name, folder / "shared" / name)
        shutil.copytree(ROOT / "shared" / "sandbox", folder / "shared" / "sandbox")
        for path in [folder, *folder.rglob("*")]:
            path.chmod(0o755)
        yield (
            [python],
            {
                "env": {"PYTHONPATH": str(folder), "PATH": "/usr/bin:/bin"},
                "user": 65534,
                "group": 65534,
                "extra_groups": [],
                "cwd": folder,
            },
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _sandbox_under(
    profile: dict[str, Any], caps: frozenset[str], how: tuple[list[str], dict[str, Any]]
) -> str:
    """Start the sandbox (and in it the reported escape) in a process under ``profile``; its report."""
    argv, kwargs = how
    with service_home_with_a_secret() as secret:
        script = (
            "import subprocess, sys\n"
            "from shared.sandbox import Isolation, IsolationUnavailable\n"
            f"iso = Isolation({argv[0]!r}, allow_unisolated=False)\n"
            "try:\n"
            "    iso.isolated\n"
            "except IsolationUnavailable as exc:\n"
            "    print('REFUSED', exc)\n"
            "    sys.exit(0)\n"
            "with iso.workdir() as wd:\n"
            f"    p = iso.popen(['-I', '-S', '-c', {fork_exec_escape(str(secret))!r}], workdir=wd,\n"
            "                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT)\n"
            "    print('RAN', p.communicate(timeout=30)[0].decode())\n"
        )
        result = subprocess.run(
            [*argv, "-c", script],
            preexec_fn=loader(profile, caps),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            **kwargs,
        )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("runtime", sorted(CAPS))
def test_under_dockers_default_the_sandbox_is_refused_with_the_reason(
    runtime: str, container_like: tuple[list[str], dict[str, Any]]
) -> None:
    out = _sandbox_under(DOCKER_DEFAULT, CAPS[runtime], container_like)
    assert out.startswith("REFUSED running code is refused: the sandbox cannot isolate it here"), out
    assert "namespace" in out and "deploy/seccomp/puyu-sandbox.json" in out, out


@pytest.mark.parametrize("runtime", sorted(CAPS))
def test_under_the_puyu_profile_the_sandbox_runs_and_holds(
    runtime: str, container_like: tuple[list[str], dict[str, Any]]
) -> None:
    out = _sandbox_under(PUYU, CAPS[runtime], container_like)
    assert out.startswith("RAN"), out
    assert SECRET not in out and "spawn failed: b'/bin/sh'" in out, out


def test_every_added_rule_is_needed(container_like: tuple[list[str], dict[str, Any]]) -> None:
    base = len(DOCKER_DEFAULT["syscalls"])
    for name in ("clone", "unshare", "mount", "umount2", "pivot_root", "sethostname"):
        profile = copy.deepcopy(PUYU)
        for rule in profile["syscalls"][base:]:
            rule["names"] = [n for n in rule["names"] if n != name] or ["getpid"]  # getpid: allowed anyway
        out = _sandbox_under(profile, DOCKER_DEFAULT_CAPS, container_like)
        assert out.startswith("REFUSED"), f"bwrap ran without {name}: the profile allows more than it needs"


def test_compose_runs_the_sandboxed_services_with_the_profile() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    for name, service in compose["services"].items():
        options = service.get("security_opt", [])
        wanted = "seccomp=./deploy/seccomp/puyu-sandbox.json"
        sandboxed = name.removesuffix("-gpu") in SANDBOXED  # a GPU variant (profile gpu) is its service
        assert (wanted in options) == sandboxed, f"{name}: security_opt {options}"


def test_kubernetes_runs_the_sandboxed_services_with_the_profile_and_the_rest_with_runtime_default() -> None:
    pods = {}
    for path in (ROOT / "deploy" / "k8s" / "services").glob("*.yaml"):
        for obj in yaml.safe_load_all(path.read_text()):
            if obj and obj["kind"] == "Deployment":
                pods[obj["metadata"]["name"]] = obj["spec"]["template"]["spec"]["securityContext"][
                    "seccompProfile"
                ]
    assert set(SANDBOXED) <= set(pods)
    for name, profile in pods.items():
        if name in SANDBOXED:
            # relative to the kubelet's seccomp root: the file the docs tell nodes to hold
            assert profile == {"type": "Localhost", "localhostProfile": "puyu/sandbox.json"}, name
        else:
            assert profile == {"type": "RuntimeDefault"}, name
