"""The slurm launcher against a real single-node Slurm (tests/support/slurm.py): runs of the launch
probe (tests/support/launch_probe.py, a real run program under real torchrun) succeed with their
ranks and fail with their reason. A requeue mid-run, its restarts and a cancel that reaches every
rank are tested end to end with the trainer (tests/integration/test_trainer_slurm.py)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from shared.launch import RunSpec, RunState, RunStatus, read_error, read_result
from shared.launch.slurm import SlurmLauncher, SlurmSettings
from tests.support.slurm import SlurmCluster, slurm_cluster  # noqa: F401 - the fixture

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
PROBE = "tests.support.launch_probe"


def launcher_for(cluster: SlurmCluster) -> SlurmLauncher:
    return SlurmLauncher(SlurmSettings(conf=cluster.conf, poll_seconds=0))


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
