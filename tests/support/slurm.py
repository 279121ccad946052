"""A real single-node Slurm for tests: munged, slurmctld and slurmd of Debian's packages, started in a
temporary folder on free ports with this host's real CPU count and memory.

Nothing is shared with a system Slurm: its own munge key and socket, its own slurm.conf (the client
commands find it through ``SLURM_CONF``, which ``SlurmCluster.env`` holds), its own state and spool
folders. No accounting database: ``AccountingStorageType=accounting_storage/none``, so ``sacct`` has
nothing to read; jobs are watched through ``squeue`` and ``scontrol show job`` (finished jobs stay in
the controller for ``MinJobAge`` seconds). Processes are tracked by ``proctrack/linuxproc`` and tasks
are not confined (``task/none``): a container has no cgroup of its own to give Slurm.

The daemons run as root (slurmd must, to start jobs as their user); ``make slurm-tools`` installs the
packages on Debian/Ubuntu. The ``slurm_cluster`` fixture skips with the reason where either is missing.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.natsserver import free_port

NODE = "puyu-node"
PARTITION = "debug"
_DAEMONS = ("munged", "slurmctld", "slurmd")
_CLIENTS = ("sbatch", "squeue", "scontrol", "scancel", "sinfo")


def missing_reason() -> str | None:
    """Why a Slurm cannot be started here, or None."""
    if os.geteuid() != 0:
        return "a test Slurm needs root (slurmd starts jobs as their user)"
    found = {name: shutil.which(name) or _sbin(name) for name in _DAEMONS + _CLIENTS}
    absent = sorted(name for name, path in found.items() if path is None)
    if absent:
        return f"Slurm/munge binaries missing ({', '.join(absent)}): run `make slurm-tools`"
    return None


def _sbin(name: str) -> str | None:
    path = Path("/usr/sbin") / name
    return str(path) if path.exists() else None


def _binary(name: str) -> str:
    found = shutil.which(name) or _sbin(name)
    if found is None:
        raise RuntimeError(f"{name} not found: run `make slurm-tools`")
    return found


def node_hardware() -> tuple[int, int]:
    """(CPUs, RealMemory in MB) as slurmd measures this host (``slurmd -C``)."""
    out = subprocess.run([_binary("slurmd"), "-C"], capture_output=True, text=True, check=True).stdout
    cpus = re.search(r"\bCPUs=(\d+)", out)
    memory = re.search(r"\bRealMemory=(\d+)", out)
    if cpus is None or memory is None:
        raise RuntimeError(f"unexpected `slurmd -C` output: {out!r}")
    return int(cpus.group(1)), int(memory.group(1))


class SlurmCluster:
    """munged + slurmctld + slurmd under ``root``; ``start()`` returns once ``sinfo`` shows the node idle."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.conf = self.root / "slurm.conf"
        self.munge_socket = self.root / "munge" / "munge.socket"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def env(self) -> dict[str, str]:
        """What a Slurm client command needs to find this cluster."""
        return {"SLURM_CONF": str(self.conf)}

    def client(self, *args: str, check: bool = True, timeout: float = 30) -> str:
        """Run a Slurm client command (``scontrol``, ``squeue`` ...) against this cluster."""
        result = subprocess.run(
            list(args),
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} exited {result.returncode}: {result.stderr.strip()}")
        return result.stdout

    def _write_config(self) -> None:
        cpus, memory = node_hardware()
        for sub in ("munge", "state", "spool", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "munge").chmod(0o700)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        ctld_port, slurmd_port = free_port(), free_port()
        while slurmd_port == ctld_port:
            slurmd_port = free_port()
        r = self.root
        self.conf.write_text(
            "\n".join(
                [
                    "ClusterName=puyutest",
                    "SlurmctldHost=localhost(127.0.0.1)",
                    f"SlurmctldPort={ctld_port}",
                    f"SlurmdPort={slurmd_port}",
                    "SlurmUser=root",
                    "SlurmdUser=root",
                    "AuthType=auth/munge",
                    "CredType=cred/munge",
                    # A requeued job waits cred_expire seconds before it may start again (120 by default).
                    f"AuthInfo=socket={self.munge_socket},cred_expire=10",
                    f"StateSaveLocation={r / 'state'}",
                    f"SlurmdSpoolDir={r / 'spool'}",
                    f"SlurmctldPidFile={r / 'slurmctld.pid'}",
                    f"SlurmdPidFile={r / 'slurmd.pid'}",
                    f"SlurmctldLogFile={r / 'log' / 'slurmctld.log'}",
                    f"SlurmdLogFile={r / 'log' / 'slurmd.log'}",
                    "SlurmctldDebug=info",
                    "SlurmdDebug=info",
                    "ProctrackType=proctrack/linuxproc",
                    "TaskPlugin=task/none",
                    "JobAcctGatherType=jobacct_gather/none",
                    "AccountingStorageType=accounting_storage/none",
                    "JobCompType=jobcomp/none",
                    "SchedulerType=sched/backfill",
                    "SelectType=select/cons_tres",
                    "SelectTypeParameters=CR_Core",
                    "MpiDefault=none",
                    "ReturnToService=2",
                    # Finished jobs stay visible to `scontrol show job` this long (there is no sacct here).
                    "MinJobAge=600",
                    "KillWait=5",
                    "InactiveLimit=0",
                    "SlurmdTimeout=60",
                    f"NodeName={NODE} NodeHostname={os.uname().nodename} NodeAddr=127.0.0.1 "
                    f"CPUs={cpus} RealMemory={memory} State=UNKNOWN",
                    f"PartitionName={PARTITION} Nodes={NODE} Default=YES MaxTime=INFINITE State=UP",
                    "",
                ]
            )
        )
        # No cgroup plugin is in use (linuxproc, task/none); the file keeps slurmd from the system's.
        (self.root / "cgroup.conf").write_text("CgroupPlugin=autodetect\nIgnoreSystemd=yes\n")

    def _spawn(self, name: str, args: list[str]) -> None:
        log = open(self.root / "log" / f"{name}.out", "ab")
        self.procs[name] = subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **self.env},
            start_new_session=True,
        )

    def start(self, timeout: float = 60.0) -> SlurmCluster:
        self._write_config()
        r = self.root
        self._spawn(
            "munged",
            [
                _binary("munged"),
                "--foreground",
                "--force",
                f"--socket={self.munge_socket}",
                f"--key-file={r / 'munge' / 'munge.key'}",
                f"--pid-file={r / 'munge' / 'munged.pid'}",
                f"--seed-file={r / 'munge' / 'munged.seed'}",
                f"--log-file={r / 'log' / 'munged.log'}",
            ],
        )
        self._wait(lambda: self.munge_socket.exists(), "munged's socket", timeout)
        self._spawn("slurmctld", [_binary("slurmctld"), "-D", "-c", "-i", "-f", str(self.conf)])
        self._wait(lambda: self._answers("scontrol", "ping"), "slurmctld to answer `scontrol ping`", timeout)
        self._spawn("slurmd", [_binary("slurmd"), "-D", "-N", NODE, "-f", str(self.conf)])
        self._wait(self._node_idle, f"node {NODE} to be idle in `sinfo`", timeout)
        return self

    def _answers(self, *args: str) -> bool:
        try:
            out = self.client(*args, check=False, timeout=10)
        except subprocess.TimeoutExpired:
            return False
        return "is UP" in out

    def _node_idle(self) -> bool:
        out = self.client("sinfo", "-h", "-N", "-o", "%T", check=False, timeout=10).strip()
        return out == "idle"

    def _wait(self, ready: object, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}; logs in {self.root / 'log'}")
            if ready():  # type: ignore[operator]
                return
            time.sleep(0.3)
        raise RuntimeError(f"timed out waiting for {what}; logs in {self.root / 'log'}")

    def stop(self) -> None:
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            # Every job of this cluster ends with its processes before the daemons go.
            self.client("scancel", "--full", "--user", "root", check=False)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and self.client("squeue", "-h", check=False).strip():
                time.sleep(0.5)
        for name in reversed(_DAEMONS):
            proc = self.procs.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def __enter__(self) -> SlurmCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    """A single-node Slurm of its own for the tests of one module (skipped where it cannot run)."""
    reason = missing_reason()
    if reason is not None:
        pytest.skip(reason)
    with SlurmCluster(tmp_path_factory.mktemp("slurm")) as cluster:
        yield cluster
