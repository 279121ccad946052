"""The slurm launcher against a real single-node Slurm (tests/support/slurm.py): runs of the launch
probe (tests/support/launch_probe.py, a real run program under real torchrun) succeed, fail, are
requeued with their restarts counted, and are cancelled on every rank."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import psutil
import pytest

from shared.launch import RunSpec, RunState, RunStatus, read_error, read_result
from shared.launch.slurm import SlurmLauncher, SlurmSettings
from tests.support.slurm import SlurmCluster, slurm_cluster  # noqa: F401 - the fixture

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
PROBE = "tests.support.launch_probe"


def launcher_for(cluster: SlurmCluster) -> SlurmLauncher:
    return SlurmLauncher(SlurmSettings(conf=cluster.conf))


def probe(run_dir: Path, mode: str, nprocs: int = 2) -> RunSpec:
    return RunSpec(
        run_id=f"probe-{mode}",
        module=PROBE,
        args=("--run-dir", str(run_dir), "--mode", mode),
        run_dir=run_dir,
        nprocs_per_node=nprocs,
        env={"PYTHONPATH": str(ROOT)},  # the job runs in its run folder; the probe lives in tests/
    )


def wait_for(launcher: SlurmLauncher, handle: str, done: object, timeout: float = 180) -> RunStatus:
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        status = launcher.status(handle)
        seen.append(status.message)
        if done(status):  # type: ignore[operator]
            return status
        time.sleep(0.5)
    raise AssertionError(f"timed out; states seen: {seen[-5:]}")


def rank_pids(run_dir: Path, ranks: int = 2) -> dict[int, int]:
    folder = run_dir / "pids"
    found = {int(p.name): int(p.read_text()) for p in folder.glob("*")} if folder.exists() else {}
    return found if len(found) == ranks and all(psutil.pid_exists(p) for p in found.values()) else {}


def job_id(handle: str) -> str:
    return str(json.loads(handle)["job_id"])


def test_run_succeeds_with_its_ranks(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:  # noqa: F811
    launcher = launcher_for(slurm_cluster)
    spec = probe(tmp_path / "run", "succeed")
    handle = launcher.submit(spec)
    status = wait_for(launcher, handle, lambda s: s.state.terminal)
    assert status.state is RunState.SUCCEEDED, status
    result = read_result(spec.run_dir)
    assert result is not None and result.extra["world"] == 2 and result.step == 7
    assert sorted(p.name for p in (spec.run_dir / "pids").iterdir()) == ["0", "1"]
    script = (spec.run_dir / "slurm" / "job.sbatch").read_text()
    assert "#SBATCH --requeue" in script
    log = (spec.run_dir / "logs" / f"slurm-{job_id(handle)}.out").read_text()
    assert "attempt 0" in log


def test_failed_run_is_failed_with_its_reason(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:  # noqa: F811
    launcher = launcher_for(slurm_cluster)
    spec = probe(tmp_path / "run", "fail", nprocs=1)  # with two, the healthy rank ignores SIGTERM for 30 s
    handle = launcher.submit(spec)
    status = wait_for(launcher, handle, lambda s: s.state.terminal)
    assert status.state is RunState.FAILED and "FAILED" in status.message, status
    error = read_error(spec.run_dir)
    assert error is not None and "rank 0 broke" in error.message


def test_requeued_run_runs_again_under_the_same_job_and_cancel_reaches_every_rank(
    slurm_cluster: SlurmCluster,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PUYU_AUTH_TOKEN", "must-not-reach-the-job")
    launcher = launcher_for(slurm_cluster)
    spec = probe(tmp_path / "run", "hang")
    handle = launcher.submit(spec)
    wait_for(launcher, handle, lambda s: s.state is RunState.RUNNING and rank_pids(spec.run_dir))
    first = rank_pids(spec.run_dir)
    # Each rank has the service's environment (its interpreter's venv) but not the service's token.
    environ = psutil.Process(first[0]).environ()
    assert environ["PYTHONPATH"] == str(ROOT) and environ["RANK"] == "0" and environ["WORLD_SIZE"] == "2"
    assert "PUYU_AUTH_TOKEN" not in environ and environ.get("PUYU_RUN_RESTARTS") == "0"

    # Preemption as Slurm does it: the job's processes are killed and it waits to run again.
    slurm_cluster.client("scontrol", "requeue", job_id(handle))
    status = wait_for(launcher, handle, lambda s: s.state is RunState.PENDING)
    assert status.restarts == 1
    assert not any(psutil.pid_exists(p) for p in first.values())
    for p in (spec.run_dir / "pids").iterdir():
        p.unlink()
    status = wait_for(launcher, handle, lambda s: s.state is RunState.RUNNING and rank_pids(spec.run_dir))
    second = rank_pids(spec.run_dir)
    assert status.restarts == 1 and set(second.values()).isdisjoint(first.values())
    assert psutil.Process(second[1]).environ()["PUYU_RUN_RESTARTS"] == "1"
    log = (spec.run_dir / "logs" / f"slurm-{job_id(handle)}.out").read_text()
    assert "attempt 0" in log and "attempt 1" in log  # one log, appended by each attempt

    launcher.cancel(handle)
    status = wait_for(launcher, handle, lambda s: s.state.terminal, timeout=60)
    assert status.state is RunState.CANCELLED and status.restarts == 1
    deadline = time.monotonic() + 30
    while any(psutil.pid_exists(p) for p in second.values()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(psutil.pid_exists(p) for p in second.values()), "a rank outlived the cancel"
    launcher.cancel(handle)  # cancelling a finished run changes nothing
    assert launcher.status(handle).state is RunState.CANCELLED


def test_a_job_the_controller_forgot_is_read_from_the_run_folder(
    slurm_cluster: SlurmCluster,  # noqa: F811
    tmp_path: Path,
) -> None:
    # No accounting here, so once MinJobAge has passed only the run folder can say how a run ended.
    launcher = launcher_for(slurm_cluster)
    gone = json.dumps({"job_id": "999999", "run_dir": str(tmp_path)})
    status = launcher.status(gone)
    assert status.state is RunState.FAILED and "unknown" in status.message
    (tmp_path / "result.json").write_text(
        json.dumps({"checkpoint": "file:///c", "step": 3, "metrics": {}, "extra": {}})
    )
    assert launcher.status(gone).state is RunState.SUCCEEDED
    assert os.environ.get("SLURM_CONF") is None  # the cluster is named by the settings, not the process
