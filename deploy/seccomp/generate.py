"""Writes puyu-sandbox.json: Docker's default seccomp profile plus what bubblewrap needs, nothing more.

The agent runtime and the evaluator run model-written code in ``shared.sandbox`` (bubblewrap), which
makes a user namespace as the container's unprivileged user and mounts its view inside it. Docker's
default profile and Kubernetes' RuntimeDefault refuse that (``clone``/``unshare`` of namespaces,
``mount``, ``pivot_root``... only with CAP_SYS_ADMIN, which these containers do not hold). The rules
added here are the six calls bwrap makes for that (each one's absence stops it: checked by
tests/contract/test_contract_seccomp.py), and ``clone``/``unshare`` only when they create a user
namespace: any other namespace still needs CAP_SYS_ADMIN, and the mounts work only inside the new user
namespace, where the container's files are not the kernel's to give away.

``docker-default.json`` is moby/profiles' seccomp/default.json (Apache-2.0) as of commit cd3bed8;
to follow a newer Docker, replace it and rerun ``python deploy/seccomp/generate.py``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BASE = HERE / "docker-default.json"
PROFILE = HERE / "puyu-sandbox.json"
CLONE_NEWUSER = 0x10000000
_WHY = "puyu: bubblewrap (shared.sandbox) "


def _creates_user_namespace(arg: int) -> list[dict[str, Any]]:
    # Docker's MASKED_EQ: (argument & value) == valueTwo
    return [{"index": arg, "value": CLONE_NEWUSER, "valueTwo": CLONE_NEWUSER, "op": "SCMP_CMP_MASKED_EQ"}]


BWRAP_RULES: list[dict[str, Any]] = [
    {
        "names": ["clone"],
        "action": "SCMP_ACT_ALLOW",
        "args": _creates_user_namespace(0),
        "comment": _WHY + "starts the sandbox in new namespaces, a new user namespace among them",
        "excludes": {"arches": ["s390", "s390x"]},
    },
    {
        "names": ["clone"],
        "action": "SCMP_ACT_ALLOW",
        "args": _creates_user_namespace(1),
        "comment": _WHY + "the same on s390, whose clone takes its flags second",
        "includes": {"arches": ["s390", "s390x"]},
    },
    {
        "names": ["unshare"],
        "action": "SCMP_ACT_ALLOW",
        "args": _creates_user_namespace(0),
        "comment": _WHY + "enters a nested user namespace (--disable-userns)",
    },
    {
        "names": ["mount", "umount2", "pivot_root", "sethostname"],
        "action": "SCMP_ACT_ALLOW",
        "comment": _WHY + "builds the sandbox's filesystem view and hostname inside its user namespace",
    },
]


def profile() -> dict[str, Any]:
    base = json.loads(BASE.read_text())
    return {**base, "syscalls": [*base["syscalls"], *BWRAP_RULES]}


def render() -> str:
    return json.dumps(profile(), indent=2) + "\n"


if __name__ == "__main__":
    if "--check" in sys.argv:
        sys.exit(0 if PROFILE.read_text() == render() else f"{PROFILE} is stale: rerun {__file__}")
    PROFILE.write_text(render())
