"""The slurm launcher without a cluster: the batch script it renders, Slurm's job states, the fields
of ``scontrol show job`` (a line from a real slurmctld 22.05), the environment a job gets, refusals."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from shared.launch import LauncherUnavailable, LaunchSpecError, RunSpec, RunState, launcher_from
from shared.launch.environment import job_environment
from shared.launch.slurm import (
    SlurmLauncher,
    SlurmSettings,
    map_state,
    parse_scontrol,
    sbatch_options,
)
from shared.natsserver import free_port
from shared.settings import LaunchSettings

# `scontrol show job -o 1` of a finished batch job on the test cluster (tests/support/slurm.py).
SHOW_JOB = (
    "JobId=1 JobName=wrap UserId=root(0) GroupId=root(0) MCS_label=N/A Priority=4294901759 Nice=0 "
    "Account=(null) QOS=(null) JobState=COMPLETED Reason=None Dependency=(null) Requeue=1 Restarts=0 "
    "BatchFlag=1 Reboot=0 ExitCode=0:0 RunTime=00:00:03 TimeLimit=UNLIMITED TimeMin=N/A "
    "SubmitTime=2026-12-05T21:38:12 EligibleTime=2026-12-05T21:38:12 AccrueTime=2026-12-05T21:38:12 "
    "StartTime=2026-12-05T21:38:14 EndTime=2026-12-05T21:38:17 Deadline=N/A SuspendTime=None "
    "SecsPreSuspend=0 LastSchedEval=2026-12-05T21:38:14 Scheduler=Main Partition=debug "
    "AllocNode:Sid=localhost:7087 ReqNodeList=(null) ExcNodeList=(null) NodeList=puyu-node "
    "BatchHost=puyu-node NumNodes=1 NumCPUs=1 NumTasks=1 CPUs/Task=1 ReqB:S:C:T=0:0:*:* "
    "TRES=cpu=1,node=1,billing=1 Socks/Node=* NtasksPerN:B:S:C=0:0:*:* CoreSpec=* MinCPUsNode=1 "
    "MinMemoryNode=0 MinTmpDiskNode=0 Features=(null) DelayBoot=00:00:00 OverSubscribe=OK Contiguous=0 "
    "Licenses=(null) Network=(null) Command=(null) WorkDir=/work/main StdErr=/tmp/s/job.out "
    "StdIn=/dev/null StdOut=/tmp/s/job.out Power= "
)


def run_spec(run_dir: Path, **kw: object) -> RunSpec:
    return RunSpec(
        run_id="pretrain-job-1",
        module="services.trainer.run_worker",
        args=("--run-dir", str(run_dir), "--note", "two words; $(rm -rf /)"),
        run_dir=run_dir,
        **kw,  # type: ignore[arg-type]
    )


def test_script_asks_for_nodes_and_runs_srun_torchrun(tmp_path: Path) -> None:
    launcher = SlurmLauncher(
        SlurmSettings(partition="gpu", time_limit="1-00:00:00", mem="64G", rdzv_port=29411)
    )
    script = launcher.render(
        run_spec(tmp_path, nnodes=4, nprocs_per_node=8, gpus_per_node=8), python="/opt/py"
    )
    options = sbatch_options(script)
    assert "--requeue" in options and "--nodes=4" in options and "--ntasks-per-node=1" in options
    assert "--gpus-per-node=8" in options and "--cpus-per-task=8" in options
    assert {"--partition=gpu", "--time=1-00:00:00", "--mem=64G", "--open-mode=append"} <= set(options)
    assert f"--output={tmp_path.resolve()}/logs/slurm-%j.out" in options
    (srun,) = [line for line in script.splitlines() if line.startswith("srun ")]
    words = shlex.split(srun)
    assert words[:5] == ["srun", "--kill-on-bad-exit=1", "--ntasks-per-node=1", "/opt/py", "-m"]
    assert words[5] == "torch.distributed.run" and "--nnodes=4" in words and "--nproc-per-node=8" in words
    assert "--rdzv-backend=c10d" in words and "--rdzv-endpoint=$head_addr:$port" in words
    module_at = words.index("-m", 6)
    # The run's arguments reach it as they were given: quoted, never interpreted by the shell.
    assert words[module_at + 1 :] == ["services.trainer.run_worker", *run_spec(tmp_path).args]
    assert "port=29411" in script.splitlines()
    # bash can parse it (no quoting accident).
    path = tmp_path / "job.sbatch"
    path.write_text(script)
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0


def test_script_defaults(tmp_path: Path) -> None:
    script = SlurmLauncher(SlurmSettings()).render(run_spec(tmp_path, nprocs_per_node=2))
    options = sbatch_options(script)
    assert not any(o.startswith(("--gpus", "--partition", "--time", "--mem")) for o in options)
    assert "--cpus-per-task=2" in options  # one CPU per process unless told
    # The port follows the job id, so two runs sharing a first node do not collide.
    assert "port=$((20000 + SLURM_JOB_ID % 20000))" in script


@pytest.mark.parametrize(
    ("settings", "spec_kw", "needle"),
    [
        ({}, {"run_dir": Path("/tmp/has space")}, "whitespace"),
        ({}, {"run_dir": Path("/tmp/50%")}, "'%'"),
        ({"partition": "gpu\n#SBATCH --x"}, {}, "not a plain Slurm value"),
        ({"python": "/opt/my python/bin/python"}, {}, "python"),
    ],
)
def test_values_that_sbatch_lines_would_misread_are_refused(
    tmp_path: Path, settings: dict[str, str], spec_kw: dict[str, Path], needle: str
) -> None:
    run_dir = spec_kw.get("run_dir", tmp_path)
    with pytest.raises(LaunchSpecError, match=needle):
        SlurmLauncher(SlurmSettings(**settings)).render(run_spec(run_dir))  # type: ignore[arg-type]


def test_extra_args_must_be_options() -> None:
    assert SlurmSettings(extra_args=["--constraint=a100", "--exclusive"]).extra_args
    with pytest.raises(ValueError, match="extra_args"):
        SlurmSettings(extra_args=["; rm -rf /"])


@pytest.mark.parametrize(
    ("slurm", "state"),
    [
        ("PENDING", RunState.PENDING),
        ("REQUEUED", RunState.PENDING),
        ("REQUEUE_HOLD", RunState.PENDING),
        ("PREEMPTED", RunState.PENDING),
        ("CONFIGURING", RunState.PENDING),
        ("RUNNING", RunState.RUNNING),
        ("COMPLETING", RunState.RUNNING),
        ("SUSPENDED", RunState.RUNNING),
        ("COMPLETED", RunState.SUCCEEDED),
        ("FAILED", RunState.FAILED),
        ("TIMEOUT", RunState.FAILED),
        ("NODE_FAIL", RunState.FAILED),
        ("OUT_OF_MEMORY", RunState.FAILED),
        ("BOOT_FAIL", RunState.FAILED),
        ("CANCELLED", RunState.CANCELLED),
        ("CANCELLED by 0", RunState.CANCELLED),  # as sacct writes it
        ("CANCELLED+", RunState.CANCELLED),
    ],
)
def test_job_states(slurm: str, state: RunState) -> None:
    assert map_state(slurm) is state


def test_unknown_and_unrequeueable_states() -> None:
    assert map_state("SOMETHING_NEW") is None
    assert map_state("") is None
    assert map_state("PREEMPTED", requeue=False) is RunState.FAILED


def test_scontrol_fields_and_status_of_a_real_line() -> None:
    fields = parse_scontrol(SHOW_JOB)
    assert fields["JobState"] == "COMPLETED" and fields["Restarts"] == "0" and fields["ExitCode"] == "0:0"
    assert fields["Requeue"] == "1" and fields["NodeList"] == "puyu-node" and fields["Power"] == ""
    launcher = SlurmLauncher(SlurmSettings())
    assert launcher._from_fields("1", fields).state is RunState.SUCCEEDED
    requeued = parse_scontrol(
        SHOW_JOB.replace("JobState=COMPLETED Reason=None", "JobState=PENDING Reason=BeginTime").replace(
            "Restarts=0", "Restarts=2"
        )
    )
    status = launcher._from_fields("1", requeued)
    assert status.state is RunState.PENDING and status.restarts == 2 and "BeginTime" in status.message
    failed = launcher._from_fields(
        "1", parse_scontrol(SHOW_JOB.replace("COMPLETED", "FAILED").replace("0:0", "1:0"))
    )
    assert failed.state is RunState.FAILED and "exit code 1:0" in failed.message


def test_job_environment_keeps_the_service_env_but_not_its_own_credentials() -> None:
    base = {
        "PATH": "/venv/bin:/usr/bin",
        "VIRTUAL_ENV": "/venv",
        "PYTHONHASHSEED": "0",
        "TOKENIZERS_PARALLELISM": "false",
        "PUYU_HOME": "/var/lib/puyu",
        "PUYU_ARTIFACT_ROOT": "s3://puyu/artifacts",
        "AWS_ACCESS_KEY_ID": "AKIA",  # the store's keys: the run writes its checkpoints there
        "AWS_SECRET_ACCESS_KEY": "s3cret",
        "PUYU_AUTH_TOKEN": "t0ken",
        "PUYU_AUTH_TOKEN_FILE": "/run/secrets/token",
        "PUYU_NATS_NKEY_SEED_FILE": "/run/secrets/seed",
        "PUYU_DATABASE_PASSWORD": "pw",
        "SLURM_JOB_ID": "77",  # the controller's own allocation, were it in one
        "SBATCH_PARTITION": "x",
        "SLURM_CONF": "/etc/slurm/slurm.conf",
    }
    env = job_environment(base, {"PUYU_RUN_ID": "r"})
    dropped = {
        "PUYU_AUTH_TOKEN",
        "PUYU_AUTH_TOKEN_FILE",
        "PUYU_NATS_NKEY_SEED_FILE",
        "PUYU_DATABASE_PASSWORD",
        "SLURM_JOB_ID",
        "SBATCH_PARTITION",
    }
    assert env == {**{k: v for k, v in base.items() if k not in dropped}, "PUYU_RUN_ID": "r"}


def test_refused_where_slurm_is_absent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    monkeypatch.setenv("PUYU_LAUNCHER", "slurm")
    launcher = launcher_from(LaunchSettings())
    assert isinstance(launcher, SlurmLauncher)
    with pytest.raises(LauncherUnavailable, match="sbatch"):
        launcher.submit(run_spec(tmp_path))
    assert not (tmp_path / "slurm").exists()  # refused before anything was written


def test_refused_when_the_controller_does_not_answer(tmp_path: Path) -> None:
    if shutil.which("scontrol") is None:
        pytest.skip("Slurm's client commands are not installed (make slurm-tools)")
    conf = tmp_path / "slurm.conf"
    # A cluster whose controller is not running: a port nothing listens on.
    conf.write_text(
        f"ClusterName=nowhere\nSlurmctldHost=localhost(127.0.0.1)\nSlurmctldPort={free_port()}\n"
        "AuthType=auth/none\nCredType=cred/none\nNodeName=n1 CPUs=1\nPartitionName=p Nodes=n1\n"
        "MessageTimeout=1\n"  # the clients give up connecting in a second, not 18
    )
    launcher = SlurmLauncher(SlurmSettings(conf=conf, command_timeout=60))
    with pytest.raises(LauncherUnavailable, match="does not answer `scontrol ping`"):
        launcher.check()
    # A job's status while its controller is away: not an ending (the run may well go on).
    status = launcher.status('{"job_id": "12", "run_dir": "/nonexistent"}')
    assert status.state is RunState.PENDING and "does not answer now" in status.message
    with pytest.raises(LauncherUnavailable, match="PUYU_SLURM_CONF"):
        SlurmLauncher(SlurmSettings(conf=tmp_path / "absent.conf")).check()
