"""The trainer as a controller (core only, no bus): runs submitted through a launcher, watched,
re-attached after a redelivery, refused before any run when the launcher cannot take them."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from contracts.events import DatasetRef
from services.trainer.core import StoredCheckpoint, Trainer, TrainingCancelled, TrainJob, run_training
from services.trainer.core.refusals import TrainConfigError
from shared.artifacts import ArtifactStore
from shared.launch import LauncherUnavailable, LaunchSpecError, UnavailableLauncher, load_handle, read_result
from shared.launch.local import LocalLauncher
from shared.read_roots import ReadRoots
from shared.settings import LaunchSettings
from tests.support.trainer_specs import micro_spec


def dataset_ref(corpus_dir: Path) -> DatasetRef:
    return DatasetRef(dataset_id="ds", manifest_uri=(corpus_dir / "manifest.json").as_uri(), digest="d")


def controller(tmp_path: Path, corpus_dir: Path, **kw: object) -> Trainer:
    store = ArtifactStore((tmp_path / "art").as_uri())
    return Trainer(store, "cpu", ReadRoots([store.root_uri, str(corpus_dir)]), poll_seconds=0.05, **kw)  # type: ignore[arg-type]


def test_local_run_equals_run_training_and_is_announced_once(corpus_dir: Path, tmp_path: Path) -> None:
    """Through the controller, the local launcher and the run folder, the same weights as calling
    run_training directly (the reference: the training code as it ran before controllers)."""
    core = controller(tmp_path, corpus_dir)
    spec = micro_spec(max_steps=12, checkpoint_interval=5, num_threads=1)
    seen: list[StoredCheckpoint] = []
    progress: list[tuple[str, float]] = []
    outcome = core.train(
        "job-1",
        spec,
        [dataset_ref(corpus_dir)],
        on_checkpoint=seen.append,
        progress=lambda stage, frac, msg="", **m: progress.append((stage, frac)),
    )
    assert [(c.step, c.final) for c in seen] == [(5, False), (10, False), (12, True)]
    assert outcome.last == seen[-1] and progress and progress[-1][1] == 1.0
    run_dir = tmp_path / "art" / "runs" / "pretrain-job-1"
    assert load_handle(run_dir) is not None and load_handle(run_dir)[0] == "local"  # type: ignore[index]
    result = read_result(run_dir)
    assert result is not None and result.checkpoint == seen[-1].checkpoint.uri and result.step == 12

    reference = run_training(
        TrainJob("ref", spec, [str(corpus_dir / "manifest.json")]),
        tmp_path / "reference",
        ArtifactStore((tmp_path / "ref-art").as_uri()),
        device="cpu",
    )
    ours = load_file(run_dir / "checkpoints" / "step-12" / "model.safetensors")
    theirs = load_file(reference.checkpoint / "model.safetensors")
    assert ours.keys() == theirs.keys()
    for name, tensor in ours.items():
        torch.testing.assert_close(tensor, theirs[name], rtol=0, atol=0, msg=name)

    # A redelivered job re-attaches to the finished run: the same final checkpoint, nothing trained.
    again: list[StoredCheckpoint] = []
    assert core.train("job-1", spec, [dataset_ref(corpus_dir)], on_checkpoint=again.append).last == seen[-1]
    assert again == [seen[-1]]


def test_a_restarted_controller_resumes_the_stopped_run(corpus_dir: Path, tmp_path: Path) -> None:
    core = controller(tmp_path, corpus_dir)
    spec = micro_spec(max_steps=30, num_threads=1)
    cancel = threading.Event()
    steps: list[float] = []

    def progress(stage: str, fraction: float, message: str = "", **metrics: float) -> None:
        if "step" in metrics:
            steps.append(metrics["step"])
            if metrics["step"] >= 3:
                cancel.set()

    with pytest.raises(TrainingCancelled):
        core.train("job-2", spec, [dataset_ref(corpus_dir)], progress=progress, cancel=cancel)
    run_dir = tmp_path / "art" / "runs" / "pretrain-job-2"
    stopped_at = json.loads((run_dir / "state" / "latest.json").read_text())["step"]
    assert 3 <= stopped_at < 30

    # A new process: its local launcher has never heard of the old handle; the run is resubmitted
    # and resumes from the saved step.
    import shared.launch.local as local

    with local._RUNS_LOCK:
        local._RUNS.clear()
    fresh = controller(tmp_path, corpus_dir)
    steps.clear()
    outcome = fresh.train("job-2", spec, [dataset_ref(corpus_dir)], progress=progress)
    assert outcome.last is not None and outcome.last.step == 30
    assert steps and min(steps) > stopped_at  # resumed, not restarted


def test_refusals_come_before_any_run(corpus_dir: Path, tmp_path: Path) -> None:
    unavailable = UnavailableLauncher.from_settings(LaunchSettings(launcher="mpi"))
    core = controller(tmp_path, corpus_dir, launcher=unavailable)
    with pytest.raises(LauncherUnavailable, match="unknown launcher 'mpi'"):
        core.check_submit(micro_spec(), [dataset_ref(corpus_dir)])
    with pytest.raises(LauncherUnavailable):
        core.train("job-3", micro_spec(), [dataset_ref(corpus_dir)])
    assert not (tmp_path / "art" / "runs" / "pretrain-job-3").exists()

    # The spec is validated at the launch's world size: 2 ranks x micro batch 8 do not divide 24.
    two = controller(tmp_path, corpus_dir, nprocs_per_node=2)
    with pytest.raises(TrainConfigError, match="world size"):
        two.check_submit(micro_spec(global_batch_size=24), [dataset_ref(corpus_dir)])
    with pytest.raises(LaunchSpecError, match="torchrun"):  # local runs one process
        two.train("job-4", micro_spec(global_batch_size=32), [dataset_ref(corpus_dir)])


def test_a_refusal_inside_the_run_is_a_refusal_of_the_job(corpus_dir: Path, tmp_path: Path) -> None:
    """The run itself finds the dataset's shard missing: error.json says refusal; the job is refused."""
    (corpus_dir / "shard-0.jsonl").unlink()
    core = controller(tmp_path, corpus_dir, launcher=LocalLauncher())
    with pytest.raises(TrainConfigError, match=r"shard-0\.jsonl"):
        core.train("job-5", micro_spec(), [dataset_ref(corpus_dir)])
