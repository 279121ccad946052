import itertools
import json
import threading
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from services.trainer.core import (
    CheckpointInfo,
    Trainer,
    TrainingCancelled,
    TrainJob,
    run_id_for,
    run_training,
)
from services.trainer.core.checkpoint import latest_resume_point
from services.trainer.core.engine import COMPILE_AUTO_MIN_STEPS, has_cxx_compiler, use_compile
from shared.artifacts import ArtifactStore
from tests.support.trainer_specs import micro_spec


def test_micro_training_lowers_loss_and_saves_a_loadable_hf_checkpoint(
    corpus_dir: Path, tmp_path: Path
) -> None:
    store = ArtifactStore((tmp_path / "art").as_uri())
    spec = micro_spec(checkpoint_interval=20)
    seen: list[CheckpointInfo] = []
    progress: list[tuple[str, float]] = []
    job = TrainJob("run-a", spec, [str(corpus_dir)], [{"dataset_id": "ds", "digest": "abc"}])
    result = run_training(
        job,
        tmp_path / "run",
        store,
        on_checkpoint=seen.append,
        progress=lambda stage, frac, msg="", **m: progress.append((stage, frac)),
    )

    losses = [m.loss for m in result.history]
    assert len(losses) == spec.max_steps
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5
    assert result.metrics["tokens_per_s"] > 0
    assert [(c.step, c.final) for c in seen] == [(20, False), (40, True)]
    assert progress[-1] == ("done", 1.0)

    ckpt = result.checkpoint
    lineage = json.loads((ckpt / "lineage.json").read_text())
    assert lineage["run_id"] == "run-a" and lineage["step"] == 40
    assert lineage["datasets"] == [{"dataset_id": "ds", "digest": "abc"}]
    assert lineage["final_loss"] == pytest.approx(losses[-1])
    assert lineage["spec"]["seq_len"] == 32

    model = AutoModelForCausalLM.from_pretrained(ckpt)
    tok = AutoTokenizer.from_pretrained(ckpt)
    assert tok.chat_template and tok.eos_token == "</s>" and tok.pad_token == "<pad>"
    ids = tok("The capital of Aldoria is", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=6, do_sample=False)
    assert out.shape[1] > ids.input_ids.shape[1]
    text = tok.decode(out[0, ids.input_ids.shape[1] :], skip_special_tokens=True)
    assert text.strip()  # the continuation decodes to text


def test_cancel_saves_state_and_the_same_run_resumes(corpus_dir: Path, tmp_path: Path) -> None:
    store = ArtifactStore((tmp_path / "art").as_uri())
    spec = micro_spec(max_steps=12)
    cancel = threading.Event()

    def stop_at_5(stage: str, frac: float, msg: str = "", **m: float) -> None:
        if m.get("step") == 5:
            cancel.set()

    job = TrainJob("run-b", spec, [str(corpus_dir)])
    with pytest.raises(TrainingCancelled):
        run_training(job, tmp_path / "run", store, progress=stop_at_5, cancel=cancel)
    point = latest_resume_point(tmp_path / "run")
    assert point is not None and point.step == 5

    resumed = run_training(job, tmp_path / "run", store)
    assert resumed.resumed_from == 5
    assert [m.step for m in resumed.history] == list(range(1, 13))

    # The uninterrupted run takes the same batches: its final weights match the resumed run's.
    straight = run_training(TrainJob("run-c", spec, [str(corpus_dir)]), tmp_path / "run-c", store)
    a = AutoModelForCausalLM.from_pretrained(resumed.checkpoint).state_dict()
    b = AutoModelForCausalLM.from_pretrained(straight.checkpoint).state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)

    # A finished run called again trains nothing and announces the same final checkpoint.
    again: list[CheckpointInfo] = []
    result = run_training(job, tmp_path / "run", store, on_checkpoint=again.append)
    assert result.resumed_from == 12 and [(c.step, c.final) for c in again] == [(12, True)]


@pytest.mark.skipif(not has_cxx_compiler(), reason="torch.compile on the CPU needs a C++ compiler")
def test_compiled_training_follows_the_eager_losses(corpus_dir: Path, tmp_path: Path) -> None:
    """torch_compile 'on' fuses the model's ops: same maths, so the same loss curve (to float noise),
    with evaluation on the eager module and a checkpoint transformers loads."""
    store = ArtifactStore((tmp_path / "art").as_uri())
    runs = {}
    for precision, mode in itertools.product(("fp32", "bf16"), ("off", "on")):
        spec = micro_spec(max_steps=8, torch_compile=mode, eval_interval=4, precision=precision)
        job = TrainJob(f"run-{precision}-{mode}", spec, [str(corpus_dir)])
        runs[precision, mode] = run_training(job, tmp_path / f"{precision}-{mode}", store)
    for precision, rel in (("fp32", 1e-4), ("bf16", 1e-2)):  # bf16: compiled attention rounds in bf16
        eager, compiled = (runs[precision, mode] for mode in ("off", "on"))
        assert [m.loss for m in compiled.history] == pytest.approx([m.loss for m in eager.history], rel=rel)
        assert compiled.metrics["eval_loss"] == pytest.approx(eager.metrics["eval_loss"], rel=rel)
    AutoModelForCausalLM.from_pretrained(runs["bf16", "on"].checkpoint)


def test_compile_auto_is_for_long_cpu_runs_only() -> None:
    cpu = torch.device("cpu")
    assert not use_compile(micro_spec(max_steps=40), cpu)
    assert use_compile(micro_spec(max_steps=COMPILE_AUTO_MIN_STEPS), cpu) == has_cxx_compiler()
    assert not use_compile(micro_spec(max_steps=COMPILE_AUTO_MIN_STEPS, zero_stage=1), cpu)
    assert not use_compile(micro_spec(max_steps=COMPILE_AUTO_MIN_STEPS, torch_compile="off"), cpu)


def test_cancel_flags_stop_this_replicas_runs(tmp_path: Path) -> None:
    core = Trainer(ArtifactStore(tmp_path.as_uri()))
    core.cancel("not-here")  # a job this replica does not run: nothing to stop
    with core.cancel_flag("a") as a, core.cancel_flag("b") as b:
        core.cancel("a")
        assert a.is_set() and not b.is_set() and not core.stopping
        core.stop_all()
        assert b.is_set() and core.stopping
    with core.cancel_flag("c") as c:  # a run that starts while the process stops stops at once
        assert c.is_set()
    assert run_id_for("train/a b") == "pretrain-train_a_b"
