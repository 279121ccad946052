"""The finetuner's run controller over the ``local`` launcher (the run module's ``main`` on a thread
of this process): a run that succeeds, a finished run taken as it is on a redelivery, a refused
run, a cancelled one."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from contracts.events import FinetuneSpec, LoraSpec
from services.finetuner.core import FinetuneRefusal
from services.finetuner.core.controller import RunController
from services.finetuner.core.runs import RunInputs
from services.finetuner.core.training import FinetuneCancelled
from shared.launch import load_handle, read_error, read_progress
from shared.launch.local import LocalLauncher

SPEC = FinetuneSpec(max_steps=3, micro_batch_size=4, seq_len=64, lora=LoraSpec(r=4, alpha=8))


def _inputs(base: Path, data: Path, spec: FinetuneSpec = SPEC) -> RunInputs:
    return RunInputs("job-1", spec, base, data, {"path": str(base)}, str(data), device="cpu")


def test_a_local_run_succeeds_and_a_redelivery_takes_its_result(
    tiny_base: Path, chat_file: Path, tmp_path: Path
) -> None:
    controller = RunController(LocalLauncher(), poll_seconds=0.1)
    run_dir = tmp_path / "run"
    reports: list[tuple[str, float]] = []
    result = controller.run(
        "ft-job-1",
        run_dir,
        _inputs(tiny_base, chat_file),
        progress=lambda s, f, m="", **k: reports.append((s, f)),
    )
    assert result.step == 3 and result.extra["world_size"] == 1
    assert (
        Path(result.checkpoint) == run_dir / "model" and Path(result.extra["adapter"]) == run_dir / "adapter"
    )
    assert (run_dir / "model" / "model.safetensors").is_file()
    assert reports and {s for s, _ in reports} <= {"load", "train", "export"}
    handle = load_handle(run_dir)
    assert handle is not None and handle[0] == "local"

    lines = len(list(read_progress(run_dir)))
    again = controller.run("ft-job-1", run_dir, _inputs(tiny_base, chat_file))
    assert again == result and load_handle(run_dir) == handle  # nothing was launched again
    assert len(list(read_progress(run_dir))) == lines


def test_a_refused_run_raises_the_refusal_and_a_cancelled_one_stops(
    tiny_base: Path, tmp_path: Path, chat_file: Path
) -> None:
    controller = RunController(LocalLauncher(), poll_seconds=0.1)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": "not a list"}\n')
    with pytest.raises(FinetuneRefusal, match=r"bad\.jsonl"):
        controller.run("ft-bad", tmp_path / "bad", _inputs(tiny_base, bad))
    error = read_error(tmp_path / "bad")
    assert error is not None and error.refusal

    cancel = threading.Event()
    cancel.set()  # before the first step: the run stops there
    long = SPEC.model_copy(update={"max_steps": 10_000})
    with pytest.raises(FinetuneCancelled, match="cancelled"):
        controller.run("ft-long", tmp_path / "long", _inputs(tiny_base, chat_file, long), cancel=cancel)
    assert not (tmp_path / "long" / "result.json").exists()
