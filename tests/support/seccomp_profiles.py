"""Docker-format seccomp profiles (``deploy/seccomp/*.json``) compiled with libseccomp, as containerd
and Docker compile them, so that a test can run real programs under the profile a container gets.

Rules are kept or skipped by their ``includes``/``excludes`` on the container's capabilities (its
bounding set: what the runtime grants, not what the process holds) and architecture, as moby's
``seccomp.setupSeccomp`` does; names this libseccomp does not know are skipped, as there.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterable
from typing import Any

import pyseccomp

# Docker's default capabilities (moby oci/caps/defaults.go): what a compose service holds unless it drops them
DOCKER_DEFAULT_CAPS = frozenset(
    "CAP_CHOWN CAP_DAC_OVERRIDE CAP_FSETID CAP_FOWNER CAP_MKNOD CAP_NET_RAW CAP_SETGID CAP_SETUID "
    "CAP_SETFCAP CAP_SETPCAP CAP_NET_BIND_SERVICE CAP_SYS_CHROOT CAP_KILL CAP_AUDIT_WRITE".split()
)
_GO_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}
_OPS = {
    "SCMP_CMP_NE": pyseccomp.NE,
    "SCMP_CMP_LT": pyseccomp.LT,
    "SCMP_CMP_LE": pyseccomp.LE,
    "SCMP_CMP_EQ": pyseccomp.EQ,
    "SCMP_CMP_GE": pyseccomp.GE,
    "SCMP_CMP_GT": pyseccomp.GT,
    "SCMP_CMP_MASKED_EQ": pyseccomp.MASKED_EQ,
}


def _applies(rule: dict[str, Any], caps: frozenset[str], arch: str) -> bool:
    inc, exc = rule.get("includes", {}), rule.get("excludes", {})
    if inc.get("caps") and not set(inc["caps"]) <= caps:
        return False
    if inc.get("arches") and arch not in inc["arches"]:
        return False
    if set(exc.get("caps", ())) & caps or arch in exc.get("arches", ()):
        return False
    return "minKernel" not in inc or _kernel() >= tuple(int(x) for x in inc["minKernel"].split("."))


def _kernel() -> tuple[int, ...]:
    return tuple(int(x) for x in platform.release().split("-")[0].split(".")[:2])


def _action(name: str, errno_ret: int | None, default_errno: int) -> int:
    if name == "SCMP_ACT_ALLOW":
        return int(pyseccomp.ALLOW)
    if name == "SCMP_ACT_ERRNO":
        return int(pyseccomp.ERRNO(errno_ret if errno_ret is not None else default_errno))
    raise ValueError(f"action {name} is not used by these profiles")


def compile_profile(profile: dict[str, Any], caps: Iterable[str]) -> pyseccomp.SyscallFilter:
    caps, arch = frozenset(caps), _GO_ARCH.get(platform.machine(), platform.machine())
    default_errno = int(profile.get("defaultErrnoRet", 1))
    filt = pyseccomp.SyscallFilter(_action(profile["defaultAction"], None, default_errno))
    for rule in profile["syscalls"]:
        if not _applies(rule, caps, arch):
            continue
        action = _action(rule["action"], rule.get("errnoRet"), default_errno)
        args = [
            pyseccomp.Arg(a["index"], _OPS[a["op"]], a["value"], a.get("valueTwo", 0))
            for a in rule.get("args", ())
        ]
        for name in rule["names"]:
            try:
                filt.add_rule(action, name, *args)
            except (ValueError, OSError):  # unknown to this libseccomp / architecture: skipped, as moby does
                continue
    return filt


def loader(profile: dict[str, Any], caps: Iterable[str]) -> Callable[[], None]:
    """A ``preexec_fn`` that puts the child (and all it runs) under ``profile``."""
    filt = compile_profile(profile, caps)
    return filt.load
