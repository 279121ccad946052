"""Launchers: the run folder's helpers, launcher_from, the local and torchrun launchers running a
real run program (tests/support/launch_probe.py) in a thread or in real processes, and the
controller loop the trainer and finetuner share over that program."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import psutil
import pytest

from shared.errors import Refusal
from shared.launch import (
    LauncherUnavailable,
    LaunchSpecError,
    ProgressReader,
    RunSpec,
    RunState,
    append_progress,
    launcher_from,
    load_handle,
    read_error,
    read_result,
    read_spec,
    write_result,
)
from shared.launch.controller import ControllerStopping, RunCancelled, RunController, RunRefused
from shared.launch.local import LocalLauncher
from shared.launch.torchrun import CANCEL_MARKER, TorchrunLauncher
from shared.settings import LaunchSettings

PROBE = "tests.support.launch_probe"


def spec(run_dir: Path, mode: str, nprocs: int = 1, **kw: object) -> RunSpec:
    return RunSpec(
        run_id="run-1",
        module=PROBE,
        args=("--run-dir", str(run_dir), "--mode", mode),
        run_dir=run_dir,
        nprocs_per_node=nprocs,
        **kw,  # type: ignore[arg-type]
    )


def wait_end(launcher: object, handle: str, timeout: float = 90.0) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = launcher.wait(handle, 1.0)  # type: ignore[attr-defined]
        if status.state.terminal:
            return status
    raise AssertionError(f"run {handle} did not end in {timeout}s")


# ------------------------------------------------------------------------------ the run folder
def test_progress_reader_sees_whole_lines_once(tmp_path: Path) -> None:
    reader = ProgressReader(tmp_path)
    assert list(reader.new()) == []  # no file yet
    append_progress(tmp_path, {"step": 1, "loss": float("nan")})
    with (tmp_path / "progress.jsonl").open("a") as f:
        f.write('{"step": 2')  # a line still being written
    first = list(reader.new())
    assert len(first) == 1 and first[0]["step"] == 1 and first[0]["loss"] != first[0]["loss"]
    with (tmp_path / "progress.jsonl").open("a") as f:
        f.write("}\n")
    assert [r["step"] for r in reader.new()] == [2]
    assert list(reader.new()) == []


def test_result_round_trip(tmp_path: Path) -> None:
    assert read_result(tmp_path) is None
    write_result(tmp_path, "file:///x/step-3", 3, {"loss": 2.0}, run_id="r")
    result = read_result(tmp_path)
    assert result is not None and (result.checkpoint, result.step, result.metrics) == (
        "file:///x/step-3",
        3,
        {"loss": 2.0},
    )
    assert result.extra == {"run_id": "r"}


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"run_id": "../etc"}, "run_id"),
        ({"module": "os; rm"}, "module"),
        ({"nprocs_per_node": 0}, "nprocs_per_node"),
        ({"gpus_per_node": -1}, "gpus_per_node"),
        ({"env": {"A-B": "1"}}, "env"),
    ],
)
def test_run_spec_refuses_bad_fields(tmp_path: Path, kwargs: dict[str, object], needle: str) -> None:
    base: dict[str, object] = {"run_id": "r", "module": PROBE, "args": (), "run_dir": tmp_path}
    with pytest.raises(LaunchSpecError, match=needle):
        RunSpec(**{**base, **kwargs})  # type: ignore[arg-type]


def test_launcher_from_names_the_problem() -> None:
    with pytest.raises(LauncherUnavailable, match="unknown launcher 'mpi'"):
        launcher_from(LaunchSettings(launcher="mpi"))
    assert isinstance(launcher_from(LaunchSettings()), LocalLauncher)  # the zero-configuration default
    torchrun = launcher_from(LaunchSettings(launcher="torchrun", launch_grace_seconds=3))
    assert isinstance(torchrun, TorchrunLauncher) and torchrun.grace_seconds == 3


# ------------------------------------------------------------------------------ local
def test_local_states(tmp_path: Path) -> None:
    launcher = LocalLauncher()
    ok = launcher.submit(spec(tmp_path / "ok", "succeed"))
    assert wait_end(launcher, ok).state == RunState.SUCCEEDED  # type: ignore[attr-defined]
    assert read_result(tmp_path / "ok") is not None

    bad = launcher.submit(spec(tmp_path / "bad", "refuse"))
    status = wait_end(launcher, bad)
    assert status.state == RunState.FAILED  # type: ignore[attr-defined]
    assert (err := read_error(tmp_path / "bad")) is not None and err.refusal

    hang = launcher.submit(spec(tmp_path / "hang", "hang"))
    assert launcher.status(hang).state == RunState.RUNNING
    launcher.cancel(hang)
    assert wait_end(launcher, hang).state == RunState.CANCELLED  # type: ignore[attr-defined]

    gone = launcher.status("local:run-1:feedfacefeed")  # a run of a process that stopped since
    assert gone.state == RunState.FAILED and "no such run" in gone.message


def test_local_refuses_what_it_cannot_do(tmp_path: Path) -> None:
    with pytest.raises(LaunchSpecError, match="torchrun"):
        LocalLauncher().submit(spec(tmp_path, "succeed", nprocs=2))
    with pytest.raises(LaunchSpecError, match="environment"):
        LocalLauncher().submit(spec(tmp_path, "succeed", env={"OMP_NUM_THREADS": "1"}))
    with pytest.raises(LaunchSpecError, match="no main"):
        LocalLauncher().submit(RunSpec("r", "shared.launch.base", (), tmp_path))


# ------------------------------------------------------------------------------ torchrun
def test_torchrun_two_ranks_succeed(tmp_path: Path) -> None:
    launcher = TorchrunLauncher(grace_seconds=5)
    handle = launcher.submit(spec(tmp_path, "succeed", nprocs=2))
    assert wait_end(launcher, handle).state == RunState.SUCCEEDED  # type: ignore[attr-defined]
    result = read_result(tmp_path)
    assert result is not None and result.extra["world"] == 2
    assert sorted(p.name for p in (tmp_path / "pids").iterdir()) == ["0", "1"]
    assert "torch.distributed.run" in (tmp_path / "logs" / "torchrun.log").read_text()


def test_torchrun_failure_names_the_rank_error(tmp_path: Path) -> None:
    launcher = TorchrunLauncher(grace_seconds=5)
    handle = launcher.submit(spec(tmp_path, "fail", nprocs=2))
    status = wait_end(launcher, handle)
    assert status.state == RunState.FAILED and status.message == "rank 1 broke"  # type: ignore[attr-defined]
    assert not _alive(tmp_path)  # torchrun ended the healthy rank with the group


def test_torchrun_cancel_reaches_every_rank(tmp_path: Path) -> None:
    """One rank ignores SIGTERM: SIGKILL after the grace period ends it; nothing is left behind."""
    launcher = TorchrunLauncher(grace_seconds=3)
    handle = launcher.submit(spec(tmp_path, "hang-ignoring-sigterm", nprocs=2))
    deadline = time.monotonic() + 60
    while len(list((tmp_path / "pids").glob("*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.3)  # both pid files written, the ranks hang
    assert launcher.status(handle).state == RunState.RUNNING
    launcher.cancel(handle)
    assert not _alive(tmp_path)
    assert launcher.status(handle).state == RunState.CANCELLED
    assert (tmp_path / CANCEL_MARKER).exists()
    launcher.cancel(handle)  # idempotent


def test_torchrun_reattaches_from_another_launcher(tmp_path: Path) -> None:
    """A restarted controller (a new launcher object that never saw the process) still reads it."""
    handle = TorchrunLauncher().submit(spec(tmp_path, "succeed", nprocs=1))
    wait_end(TorchrunLauncher(), handle)  # polls by pid; the Popen is not consulted through it
    import shared.launch.torchrun as tr

    with tr._CHILDREN_LOCK:
        tr._CHILDREN.clear()  # as in a new process: only the run folder tells the outcome
    assert TorchrunLauncher().status(handle).state == RunState.SUCCEEDED
    (tmp_path / "result.json").unlink()
    status = TorchrunLauncher().status(handle)
    assert status.state == RunState.FAILED and "gone" in status.message


def test_torchrun_refuses_more_than_this_node(tmp_path: Path) -> None:
    with pytest.raises(LaunchSpecError, match="slurm or kubernetes"):
        TorchrunLauncher().submit(spec(tmp_path, "succeed", nnodes=2))
    with pytest.raises(LauncherUnavailable, match="GPUs"):
        TorchrunLauncher().submit(spec(tmp_path, "succeed", gpus_per_node=64))
    with pytest.raises(LauncherUnavailable, match="not executable"):
        TorchrunLauncher(python=str(tmp_path / "no-python")).check()


def _alive(run_dir: Path) -> list[int]:
    pids = [int(p.read_text()) for p in (run_dir / "pids").iterdir()]
    return [
        pid
        for pid in pids
        if psutil.pid_exists(pid)
        and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        and pid != os.getpid()
    ]


def test_torchrun_ranks_inherit_no_bus_or_api_credentials() -> None:
    from shared.launch.torchrun import run_environment

    env = run_environment(
        {
            "PUYU_AUTH_TOKEN": "t",
            "PUYU_AUTH_TOKEN_FILE": "/t",
            "PUYU_NATS_NKEY_SEED_FILE": "/s",
            "PUYU_NATS_CREDS_FILE": "/c",
            "PUYU_HOME": "/h",
            "AWS_SECRET_ACCESS_KEY": "k",  # the artifact store's: the run writes checkpoints with it
            "TOKENIZERS_PARALLELISM": "false",
        }
    )
    assert env == {"PUYU_HOME": "/h", "AWS_SECRET_ACCESS_KEY": "k", "TOKENIZERS_PARALLELISM": "false"}


# ------------------------------------------------------------------------------ the controller loop
class OutlivingLocal(LocalLauncher):
    """The local launcher, its runs taken as cluster jobs that go on when their controller stops."""

    outlives_controller = True


def test_controller_forwards_reports_and_raises_the_run_outcome(tmp_path: Path) -> None:
    controller = RunController(LocalLauncher(), PROBE, poll_seconds=0.05)
    reports: list[tuple[str, float, dict[str, float]]] = []
    records: list[dict[str, object]] = []
    result = controller.run(
        "run-ok",
        tmp_path / "ok",
        {"mode": "succeed"},
        progress=lambda stage, fraction, message="", **m: reports.append((stage, fraction, m)),
        on_record=records.append,
    )
    assert (result.checkpoint, result.step, result.metrics) == ("file:///ckpt", 7, {"loss": 1.5})
    assert reports == [("train", 0.5, {"world": 1.0})]  # flat metrics beside the stage
    assert records == [{"stage": "train", "fraction": 0.5, "world": 1}]
    assert read_spec(tmp_path / "ok") == {"mode": "succeed"}

    with pytest.raises(RunRefused, match="the impossible") as refused:
        controller.run("run-bad", tmp_path / "bad", {"mode": "refuse"})
    assert isinstance(refused.value, Refusal)


def test_a_stopping_controller_leaves_a_cluster_run_and_the_next_one_reattaches(tmp_path: Path) -> None:
    launcher = OutlivingLocal()
    controller = RunController(launcher, PROBE, poll_seconds=0.05)
    run_dir, cancel = tmp_path / "hang", threading.Event()
    cancel.set()
    with pytest.raises(ControllerStopping):
        controller.run("run-hang", run_dir, {"mode": "hang"}, cancel=cancel, stopping=lambda: True)
    handle = load_handle(run_dir)
    assert handle is not None and launcher.status(handle[1]).state == RunState.RUNNING  # not cancelled

    # The redelivered job re-attaches to the same run (no second submission); a cancel now stops it.
    with pytest.raises(RunCancelled, match="run-hang"):
        controller.run("run-hang", run_dir, {"mode": "hang"}, cancel=cancel)
    assert load_handle(run_dir) == handle and launcher.status(handle[1]).state == RunState.CANCELLED
