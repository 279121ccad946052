"""A seccomp filter for sandboxed code, written as classic BPF (what ``bwrap --seccomp FD`` loads).

A deny list in the spirit of Docker's and Flatpak's default profiles: the system calls that reach kernel
surfaces a sandbox never needs (mounts, namespaces, tracing, keyrings, modules, BPF, io_uring, clocks)
fail with EPERM; sockets other than AF_UNIX fail too (the network namespace already has no interface,
this is a second wall); ``clone`` with a namespace flag fails and ``clone3``, whose flags a classic
filter cannot read, answers ENOSYS so that the C library falls back to ``clone``; the TIOCSTI and
TIOCLINUX ioctls that push input into a terminal fail. System calls of another ABI (i386 through
``int 0x80``, x32) kill the process: their numbers mean other calls.

Written by hand rather than through libseccomp so that neither a C library binding nor a package is
needed; the numbers are those of the kernel's tables for the two architectures supported.
"""

from __future__ import annotations

import errno
import functools
import platform
import struct

# BPF opcodes (linux/filter.h) and seccomp return values (linux/seccomp.h)
_LD_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
_JEQ = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_JGE = 0x35  # BPF_JMP | BPF_JGE | BPF_K
_JSET = 0x45  # BPF_JMP | BPF_JSET | BPF_K
_RET = 0x06  # BPF_RET | BPF_K
_ALLOW = 0x7FFF0000
_ERRNO = 0x00050000
_KILL_PROCESS = 0x80000000

# offsets in struct seccomp_data: nr, arch, then 64-bit arguments (the low half first on these
# little-endian architectures)
_NR, _ARCH = 0, 4


def _arg(i: int) -> int:
    return 16 + 8 * i


# system call numbers: name, x86_64, aarch64 ("-" where the call does not exist); from the kernel's
# arch/x86/entry/syscalls/syscall_64.tbl and include/uapi/asm-generic/unistd.h
_TABLE = """
mount 165 40            umount2 166 39          pivot_root 155 41       chroot 161 51
unshare 272 97          setns 308 268           ptrace 101 117          process_vm_readv 310 270
process_vm_writev 311 271 kexec_load 246 104    kexec_file_load 320 294 init_module 175 105
finit_module 313 273    delete_module 176 106   bpf 321 280             perf_event_open 298 241
userfaultfd 323 282     keyctl 250 219          add_key 248 217         request_key 249 218
acct 163 89             swapon 167 224          swapoff 168 225         reboot 169 142
syslog 103 116          quotactl 179 60         quotactl_fd 443 443     open_by_handle_at 304 265
name_to_handle_at 303 264 settimeofday 164 170  clock_settime 227 112   clock_adjtime 305 266
adjtimex 159 171        fanotify_init 300 262   io_uring_setup 425 425  io_uring_enter 426 426
io_uring_register 427 427 open_tree 428 428     move_mount 429 429      fsopen 430 430
fsconfig 431 431        fsmount 432 432         fspick 433 433          pidfd_getfd 438 438
mount_setattr 442 442   personality 135 92      lookup_dcookie 212 18   vhangup 153 58
iopl 172 -              ioperm 173 -            modify_ldt 154 -        uselib 134 -
socket 41 198           clone 56 220            clone3 435 435          ioctl 16 29
"""
_CHECKED = ("socket", "clone", "clone3", "ioctl")  # not denied outright: see build_filter


def _numbers(column: int) -> dict[str, int]:
    words = _TABLE.split()
    rows = zip(words[::3], words[1::3], words[2::3], strict=True)
    return {row[0]: int(row[column]) for row in rows if row[column] != "-"}


# audit arch, first number of a foreign ABI sharing the table (x32) or None, system call numbers
_ARCHES: dict[str, tuple[int, int | None, dict[str, int]]] = {
    "x86_64": (0xC000003E, 0x40000000, _numbers(1)),
    "aarch64": (0xC00000B7, None, _numbers(2)),
}

_AF_UNIX = 1
# CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET
_CLONE_NAMESPACES = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000
_TIOCSTI, _TIOCLINUX = 0x5412, 0x541C


def supported() -> bool:
    return platform.machine() in _ARCHES


class _Program:
    """Classic BPF with named jump targets (jumps are relative, forward only, at most 255 apart)."""

    def __init__(self) -> None:
        self._code: list[tuple[int, str | None, str | None, int]] = []
        self._labels: dict[str, int] = {}

    def label(self, name: str) -> None:
        self._labels[name] = len(self._code)

    def op(self, code: int, k: int, jt: str | None = None, jf: str | None = None) -> None:
        self._code.append((code, jt, jf, k))

    def assemble(self) -> bytes:
        out = bytearray()
        for pc, (code, jt, jf, k) in enumerate(self._code):
            out += struct.pack("=HBBI", code, self._offset(pc, jt), self._offset(pc, jf), k)
        return bytes(out)

    def _offset(self, pc: int, label: str | None) -> int:
        if label is None:
            return 0
        offset = self._labels[label] - pc - 1
        if not 0 <= offset <= 255:
            raise ValueError(f"seccomp jump to {label} out of range")
        return offset


@functools.lru_cache(maxsize=4)
def build_filter(machine: str | None = None) -> bytes:
    """The filter as an array of ``struct sock_filter`` for ``machine`` (default: this one)."""
    arch, foreign_from, numbers = _ARCHES[machine or platform.machine()]
    p = _Program()
    p.op(_LD_ABS, _ARCH)
    p.op(_JEQ, arch, jf="foreign")
    p.op(_LD_ABS, _NR)
    if foreign_from is not None:
        p.op(_JGE, foreign_from, jt="foreign")
    for name, number in numbers.items():
        if name not in _CHECKED:
            p.op(_JEQ, number, jt="deny")
    p.op(_JEQ, numbers["clone3"], jt="nosys")
    p.op(_JEQ, numbers["socket"], jt="socket")
    p.op(_JEQ, numbers["clone"], jt="clone")
    p.op(_JEQ, numbers["ioctl"], jt="ioctl")
    p.op(_RET, _ALLOW)
    p.label("socket")
    p.op(_LD_ABS, _arg(0))
    p.op(_JEQ, _AF_UNIX, jt="allow", jf="deny")
    p.label("clone")
    p.op(_LD_ABS, _arg(0))
    p.op(_JSET, _CLONE_NAMESPACES, jt="deny", jf="allow")
    p.label("ioctl")
    p.op(_LD_ABS, _arg(1))
    p.op(_JEQ, _TIOCSTI, jt="deny")
    p.op(_JEQ, _TIOCLINUX, jt="deny", jf="allow")
    p.label("allow")
    p.op(_RET, _ALLOW)
    p.label("deny")
    p.op(_RET, _ERRNO | errno.EPERM)
    p.label("nosys")
    p.op(_RET, _ERRNO | errno.ENOSYS)
    p.label("foreign")
    p.op(_RET, _KILL_PROCESS)
    return p.assemble()
