"""The ``slurm`` launcher: one batch job per run, ``srun`` starting ``torch.distributed.run`` on every node.

The rendered script (kept as ``slurm/job.sbatch`` in the run folder) asks for ``nnodes`` nodes with one
task each; that task is torchrun, which starts ``nprocs_per_node`` ranks and meets the other nodes'
torchruns in a c10d rendezvous on the job's first node. The job is submitted ``--requeue``: when Slurm
preempts or requeues it (``scontrol requeue``, a node failure), the same job id runs the script again
and the run resumes from the last checkpoint in its folder; ``status`` counts those restarts.

Jobs are watched with ``scontrol show job`` (the controller keeps finished jobs for ``MinJobAge``),
then ``sacct`` where the cluster keeps accounting, then the run folder's own result or error.
Cancelled with ``scancel``, which signals every step of the job, so every rank on every node.

The job runs with the submitting service's interpreter and environment (``sbatch`` exports it), less
the service's own PUYU_* credentials: a run never talks to the bus or the APIs (the artifact store's
keys go with it: the run writes its checkpoints into the store).
Every node must see the run folder and the interpreter at the same paths (a shared filesystem, or the
same image), as with any Slurm job.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.launch.base import (
    Launcher,
    LauncherUnavailable,
    LaunchSpecError,
    RunSpec,
    RunState,
    RunStatus,
    read_error,
    read_result,
)
from shared.launch.environment import job_environment

SCRIPT = "job.sbatch"

# Slurm job states (squeue(1) "JOB STATE CODES") -> run states. Requeued and preempted jobs wait to
# run again under the same id (submitted --requeue); restarts are counted from the job's Restarts.
_STATES: dict[str, RunState] = {
    **dict.fromkeys(
        (
            "PENDING",
            "CONFIGURING",
            "REQUEUED",
            "REQUEUE_FED",
            "REQUEUE_HOLD",
            "RESV_DEL_HOLD",
            "PREEMPTED",
        ),
        RunState.PENDING,
    ),
    **dict.fromkeys(
        ("RUNNING", "COMPLETING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT", "RESIZING"),
        RunState.RUNNING,
    ),
    "COMPLETED": RunState.SUCCEEDED,
    **dict.fromkeys(
        (
            "FAILED",
            "TIMEOUT",
            "NODE_FAIL",
            "OUT_OF_MEMORY",
            "BOOT_FAIL",
            "DEADLINE",
            "SPECIAL_EXIT",
            "REVOKED",
        ),
        RunState.FAILED,
    ),
    "CANCELLED": RunState.CANCELLED,
}

# #SBATCH lines are not shell: a path with whitespace or Slurm's %-patterns would be misread there.
_SAFE_PATH = re.compile(r"^[^\s%'\"\\]+$")


class SlurmSettings(BaseSettings):
    """``PUYU_SLURM_*``: where and how runs are queued (the process counts are LaunchSettings')."""

    model_config = SettingsConfigDict(env_prefix="PUYU_SLURM_", env_file=".env", extra="ignore")

    partition: str | None = Field(default=None, description="Partition (default: the cluster's default).")
    account: str | None = Field(default=None, description="Account charged for the runs.")
    qos: str | None = Field(default=None, description="Quality of service.")
    time_limit: str | None = Field(default=None, description="Wall-clock limit per attempt (sbatch --time).")
    cpus_per_node: int | None = Field(
        default=None, ge=1, description="CPUs per node (default: one per process of the node)."
    )
    mem: str | None = Field(default=None, description="Memory per node (sbatch --mem, e.g. 64G; 0: all).")
    exclusive: bool = Field(default=False, description="Whole nodes for each run.")
    rdzv_port: int | None = Field(
        default=None,
        ge=1024,
        le=65535,
        description="Port of the c10d rendezvous on the first node (default: 20000 + job id mod 20000, "
        "so runs sharing a node do not collide).",
    )
    python: str | None = Field(
        default=None,
        description="Interpreter on the nodes (default: this service's, which every node must see).",
    )
    conf: Path | None = Field(
        default=None, description="slurm.conf of the cluster (SLURM_CONF for the clients)."
    )
    extra_args: list[str] = Field(
        default_factory=list, description='More sbatch options (JSON list), e.g. ["--constraint=a100"].'
    )
    command_timeout: float = Field(default=30.0, gt=0, description="Seconds a Slurm client command may take.")
    poll_seconds: float = Field(
        default=5.0,
        ge=0,
        description="Least seconds between two looks at one job (each is an RPC to slurmctld, which "
        "sites ask to spare); the controller sees the job's state at most this late.",
    )

    @field_validator("extra_args")
    @classmethod
    def _options_only(cls, value: list[str]) -> list[str]:
        bad = [a for a in value if not re.match(r"^--[a-z][a-z0-9-]*(=\S.*)?$", a) or "\n" in a]
        if bad:
            raise ValueError(f"extra_args must be --option or --option=value, each one line: {bad}")
        return value


def map_state(job_state: str, requeue: bool = True) -> RunState | None:
    """A Slurm job state (``CANCELLED by 0`` as sacct writes it included) as a run state; None if unknown.

    PREEMPTED is terminal only for a job Slurm will not requeue (PreemptMode=CANCEL, no --requeue)."""
    word = job_state.split()[0].rstrip("+").upper() if job_state.strip() else ""
    if word == "PREEMPTED" and not requeue:
        return RunState.FAILED
    return _STATES.get(word)


def parse_scontrol(line: str) -> dict[str, str]:
    """``scontrol show job -o`` fields. Values of the keys read here have no spaces; the others may."""
    return dict(re.findall(r"(?:^|\s)([A-Za-z][A-Za-z0-9/:_]*)=(\S*)", line))


class SlurmLauncher(Launcher):
    name = "slurm"
    outlives_controller = True

    def __init__(self, settings: SlurmSettings | None = None) -> None:
        self.settings = settings or SlurmSettings()
        self._seen: dict[str, tuple[float, RunStatus]] = {}  # job id -> (when, its last status)

    @classmethod
    def from_settings(cls, settings: Any) -> SlurmLauncher:
        return cls(SlurmSettings())

    # ------------------------------------------------------------------ talking to the controller
    def _client_env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.settings.conf is not None:
            env["SLURM_CONF"] = str(self.settings.conf)
        return env

    def _run(self, *args: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                list(args),
                env=dict(env) if env is not None else self._client_env(),
                capture_output=True,
                text=True,
                timeout=self.settings.command_timeout,
            )
        except FileNotFoundError as exc:
            raise LauncherUnavailable(
                f"slurm: {args[0]} not found on PATH (install Slurm's client commands)"
            ) from exc
        except subprocess.TimeoutExpired as exc:
            raise LauncherUnavailable(
                f"slurm: `{' '.join(args[:3])}` did not answer in {self.settings.command_timeout:g}s"
            ) from exc

    def check(self) -> None:
        for command in ("sbatch", "scontrol", "scancel"):
            if shutil.which(command) is None:
                raise LauncherUnavailable(
                    f"slurm launcher: `{command}` is not on PATH; install Slurm's client commands "
                    "(Debian: slurm-client) or choose another PUYU_LAUNCHER"
                )
        if self.settings.conf is not None and not self.settings.conf.is_file():
            raise LauncherUnavailable(f"slurm launcher: PUYU_SLURM_CONF {self.settings.conf} does not exist")
        ping = self._run("scontrol", "ping")
        if ping.returncode != 0 or "UP" not in ping.stdout:
            said = (ping.stdout + ping.stderr).strip().replace("\n", "; ")
            raise LauncherUnavailable(
                f"slurm launcher: the Slurm controller does not answer `scontrol ping`: {said}"
            )

    # ------------------------------------------------------------------------------- the script
    def render(self, spec: RunSpec, python: str | None = None) -> str:
        """The batch script of a run. Arguments are shell-quoted; #SBATCH values are checked instead."""
        s = self.settings
        python = python or s.python or sys.executable
        log_dir = spec.log_dir.resolve()
        for what, value in (("run_dir", str(spec.run_dir.resolve())), ("python", python)):
            if not _SAFE_PATH.match(value):
                raise LaunchSpecError(
                    f"slurm launcher: {what} {value!r} has whitespace, quotes or '%', which #SBATCH lines misread"
                )
        cpus = s.cpus_per_node or spec.nprocs_per_node
        directives = [
            f"--job-name=puyu-{spec.run_id}",
            "--requeue",
            f"--nodes={spec.nnodes}",
            "--ntasks-per-node=1",
            f"--cpus-per-task={cpus}",
            f"--output={log_dir}/slurm-%j.out",
            "--open-mode=append",  # a requeued attempt appends to the same log
            f"--chdir={spec.run_dir.resolve()}",
        ]
        if spec.gpus_per_node:
            directives.append(f"--gpus-per-node={spec.gpus_per_node}")
        chosen: tuple[tuple[str, str | None], ...] = (
            ("partition", s.partition),
            ("account", s.account),
            ("qos", s.qos),
            ("time", s.time_limit),
            ("mem", s.mem),
        )
        for option, given in chosen:
            if given is not None:
                if not re.match(r"^[\w.:,+-]+$", given):
                    raise LaunchSpecError(f"slurm launcher: {option} {given!r} is not a plain Slurm value")
                directives.append(f"--{option}={given}")
        if s.exclusive:
            directives.append("--exclusive")
        directives += s.extra_args
        port = str(s.rdzv_port) if s.rdzv_port else "$((20000 + SLURM_JOB_ID % 20000))"
        torchrun = [
            python,
            "-m",
            "torch.distributed.run",
            f"--nnodes={spec.nnodes}",
            f"--nproc-per-node={spec.nprocs_per_node}",
            "--rdzv-backend=c10d",
            "--max-restarts=0",
            "-m",
            spec.module,
            *spec.args,
        ]
        quoted = " ".join(shlex.quote(a) for a in torchrun[:6])
        rest = " ".join(shlex.quote(a) for a in torchrun[6:])
        return "\n".join(
            [
                "#!/bin/bash",
                f"# puyu run {spec.run_id}: {spec.nnodes} node(s) x {spec.nprocs_per_node} process(es)",
                *(f"#SBATCH {d}" for d in directives),
                "set -euo pipefail",
                f"mkdir -p {shlex.quote(str(log_dir))}",
                # c10d rendezvous on the first node, by its address (a node's name need not resolve).
                'head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
                "head_addr=$(scontrol show node \"$head\" | sed -n 's/.*NodeAddr=\\([^ ]*\\).*/\\1/p')",
                "head_addr=${head_addr:-$head}",
                f"port={port}",
                'export PUYU_RUN_RESTARTS="${SLURM_RESTART_COUNT:-0}"',
                'echo "puyu: job $SLURM_JOB_ID attempt $PUYU_RUN_RESTARTS on $SLURM_JOB_NODELIST '
                '(rendezvous $head_addr:$port)"',
                # One torchrun per node; a failing node ends the whole step (--kill-on-bad-exit).
                f"srun --kill-on-bad-exit=1 --ntasks-per-node=1 {quoted} "
                '--rdzv-endpoint="$head_addr:$port" --rdzv-id="$SLURM_JOB_ID-$PUYU_RUN_RESTARTS" '
                f"{rest}",
                "",
            ]
        )

    # --------------------------------------------------------------------------------- the job
    def submit(self, spec: RunSpec) -> str:
        self.check()
        script = self.render(spec)
        folder = spec.run_dir / "slurm"
        folder.mkdir(parents=True, exist_ok=True)
        spec.log_dir.mkdir(parents=True, exist_ok=True)
        path = folder / SCRIPT
        path.write_text(script, encoding="utf-8")
        env = job_environment(self._client_env(), spec.env)
        done = self._run("sbatch", "--parsable", str(path), env=env)
        if done.returncode != 0:
            raise LauncherUnavailable(
                f"slurm launcher: sbatch refused run {spec.run_id}: {done.stderr.strip()}"
            )
        job_id = done.stdout.strip().split(";")[0]  # --parsable: "id" or "id;cluster"
        if not job_id.isdigit():
            raise LauncherUnavailable(
                f"slurm launcher: sbatch answered {done.stdout.strip()!r}, not a job id"
            )
        return json.dumps({"job_id": job_id, "run_dir": str(spec.run_dir.resolve())})

    @staticmethod
    def _parse_handle(handle: str) -> tuple[str, Path | None]:
        try:
            data = json.loads(handle)
            return str(int(data["job_id"])), Path(data["run_dir"]) if data.get("run_dir") else None
        except (ValueError, TypeError, KeyError) as exc:
            raise LaunchSpecError(f"slurm launcher: {handle!r} is not a handle of this launcher") from exc

    def status(self, handle: str) -> RunStatus:
        job_id, run_dir = self._parse_handle(handle)
        seen = self._seen.get(job_id)
        if seen is not None and time.monotonic() - seen[0] < self.settings.poll_seconds:
            return seen[1]
        try:
            shown = self._run("scontrol", "show", "job", "-o", job_id)
        except LauncherUnavailable as exc:  # slurmctld too slow: no news is not an ending
            return self._no_answer(seen, str(exc))
        if shown.returncode == 0 and shown.stdout.strip():
            status = self._from_fields(job_id, parse_scontrol(shown.stdout.strip().splitlines()[0]))
        elif "Invalid job id" in shown.stderr:  # gone from slurmctld (MinJobAge passed)
            status = self._finished(job_id, run_dir)
        else:
            return self._no_answer(seen, shown.stderr.strip() or f"scontrol exited {shown.returncode}")
        self._seen[job_id] = (time.monotonic(), status)
        return status

    @staticmethod
    def _no_answer(seen: tuple[float, RunStatus] | None, why: str) -> RunStatus:
        """While the controller does not answer, the run is as it was last seen (or pending)."""
        last = seen[1] if seen is not None else RunStatus(RunState.PENDING)
        return RunStatus(
            last.state, f"{last.message} (Slurm does not answer now: {why})".strip(), last.restarts
        )

    def _from_fields(self, job_id: str, fields: Mapping[str, str]) -> RunStatus:
        raw = fields.get("JobState", "")
        restarts = int(fields.get("Restarts", "0") or 0)
        state = map_state(raw, requeue=fields.get("Requeue", "1") != "0")
        reason = fields.get("Reason", "None")
        detail = f"slurm job {job_id} {raw}" + (f" ({reason})" if reason not in ("", "None") else "")
        if state is None:  # a state this code does not know: keep watching, and say so
            return RunStatus(RunState.RUNNING, f"{detail}: unknown Slurm state", restarts)
        if state is RunState.FAILED:
            detail += f", exit code {fields.get('ExitCode', '?')}"
        return RunStatus(state, detail, restarts)

    def _finished(self, job_id: str, run_dir: Path | None) -> RunStatus:
        """The controller no longer holds the job (MinJobAge passed): accounting, then the run folder."""
        acct = (
            self._run("sacct", "-j", job_id, "-X", "-n", "-P", "-o", "State,ExitCode")
            if shutil.which("sacct")
            else None
        )
        if acct is not None and acct.returncode == 0 and acct.stdout.strip():
            raw, _, code = acct.stdout.strip().splitlines()[-1].partition("|")
            state = map_state(raw, requeue=True) or RunState.FAILED
            return RunStatus(state, f"slurm job {job_id} {raw} (sacct), exit code {code}")
        if run_dir is not None:
            if read_result(run_dir) is not None:
                return RunStatus(RunState.SUCCEEDED, f"slurm job {job_id} gone; its run left a result")
            error = read_error(run_dir)
            if error is not None:
                return RunStatus(RunState.FAILED, f"slurm job {job_id} gone; the run failed: {error.message}")
        return RunStatus(
            RunState.FAILED,
            f"slurm job {job_id} is unknown to the controller and to accounting, and its run left no result",
        )

    def cancel(self, handle: str) -> None:
        job_id, _ = self._parse_handle(handle)
        self._seen.pop(job_id, None)  # the next look asks Slurm again
        done = self._run("scancel", job_id)
        # A finished or purged job: nothing left to stop.
        if done.returncode != 0 and not re.search(
            r"Invalid job id|already completing|completed", done.stderr
        ):
            raise LauncherUnavailable(f"slurm launcher: scancel {job_id} failed: {done.stderr.strip()}")


def sbatch_options(script: str) -> Sequence[str]:
    """The #SBATCH options of a rendered script (tests and ``puyu`` diagnostics read them)."""
    return [line.split(None, 1)[1] for line in script.splitlines() if line.startswith("#SBATCH ")]
