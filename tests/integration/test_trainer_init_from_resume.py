"""Continued pretraining killed and resumed: a real ``puyu train`` process starting from an
InternLM2- or Qwen2-format checkpoint is killed with SIGKILL mid-run and run again; its loss
trajectory is that of an uninterrupted run (the resumed process reads the run's last checkpoint,
saved in the source format, and its optimizer state), and both final checkpoints, read by the
independent reference, are the same model. And the same start under DeepSpeed ZeRO-3."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from contracts.events import TrainSpec
from tests.support import hf_folders as hf_references
from tests.support.hf_folders import internlm_sentencepiece_model, sentencepiece, xtuner_modelings
from tests.support.model_references import build_folder, load_reference

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
STEPS, INTERVAL = 30, 5

# session fixtures of the InternLM folders
FIXTURES = (sentencepiece, xtuner_modelings, internlm_sentencepiece_model)


def _config(tmp_path: Path, name: str, init_from: Path, **overrides: object) -> Path:
    data = tmp_path / "data.jsonl"
    if not data.exists():
        lines = list(hf_references.corpus(seed=5))
        docs = [" ".join(lines[3 * i : 3 * i + 3]).strip() for i in range(160)]
        data.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    spec = TrainSpec(
        init_from=str(init_from),
        seq_len=32,
        micro_batch_size=4,
        gradient_accumulation_steps=2,
        max_steps=STEPS,
        warmup_steps=3,
        learning_rate=3e-3,
        min_learning_rate=3e-4,
        checkpoint_interval=INTERVAL,
        precision="fp32",
        torch_compile="off",
        num_threads=1,  # one thread: float sums in a fixed order, so reruns are bit-identical
    ).model_copy(update=overrides)
    config = tmp_path / f"{name}.yaml"
    config.write_text(
        yaml.safe_dump({"datasets": [str(data)], "spec": spec.model_dump(mode="json"), "out": name})
    )
    return config


def _train(config: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "services.trainer.cli", "--config", str(config), "--resume"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _losses(run: Path) -> dict[int, list[float]]:
    """Every loss logged per step (a step run twice, before and after the kill, has two)."""
    out: dict[int, list[float]] = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        out.setdefault(rec["step"], []).append(rec["loss"])
    return out


@pytest.mark.slow
@pytest.mark.parametrize("architecture", ["internlm2", "qwen2"])
def test_sigkilled_continued_pretraining_resumes_on_the_same_loss_trajectory(
    architecture: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    source = build_folder(tmp_path / f"init-{architecture}", architecture, request)
    straight = _train(_config(tmp_path, "straight", source))
    _, err = straight.communicate(timeout=300)
    assert straight.returncode == 0, err.decode()[-2000:]

    run = tmp_path / "killed"
    proc = _train(_config(tmp_path, "killed", source))
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:  # kill between the checkpoints at steps 10 and 15
        log = run / "metrics.jsonl"
        if log.exists() and max(_losses(run), default=0) >= 12:
            break
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    killed_at = max(_losses(run))
    assert killed_at < STEPS, "the run finished before it could be killed"
    latest = json.loads((run / "state" / "latest.json").read_text())["step"]
    assert latest % INTERVAL == 0 and latest < killed_at
    # the checkpoint the resumed process starts from is in the source's format
    resumed_from = run / "checkpoints" / f"step-{latest}"
    assert json.loads((resumed_from / "config.json").read_text())["model_type"] == architecture

    resumed = _train(_config(tmp_path, "killed", source))
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err.decode()[-2000:]

    ref, got = _losses(tmp_path / "straight"), _losses(run)
    assert sorted(got) == list(range(1, STEPS + 1))
    for step in range(1, STEPS + 1):
        assert ref[step] == [pytest.approx(got[step][-1], rel=1e-6, abs=1e-7)]
        # steps redone after the kill reproduce what the killed process had logged for them
        assert all(loss == pytest.approx(got[step][-1], rel=1e-6, abs=1e-7) for loss in got[step])
    assert any(len(v) == 2 for v in got.values())  # some steps ran twice: it was killed mid-run
    assert sum(ref[s][0] for s in range(STEPS - 2, STEPS + 1)) / 3 < ref[1][0] - 0.3  # it learned

    final = f"checkpoints/step-{STEPS}"
    a = load_reference(tmp_path / "straight" / final)
    b = load_reference(run / final)
    ids = torch.randint(3, 300, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(
            a(ids, use_cache=False).logits, b(ids, use_cache=False).logits, atol=1e-5, rtol=0
        )


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="DeepSpeed is not installed")
def test_continued_pretraining_under_zero3_matches_plain_torch(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """ZeRO-3 partitions the checkpoint's parameters; the gathered weights are saved in its format."""
    source = build_folder(tmp_path / "init-internlm2", "internlm2", request)
    runs = {}
    for name, stage in (("plain", 0), ("zero3", 3)):
        config = _config(tmp_path, name, source, max_steps=6, zero_stage=stage, checkpoint_interval=3)
        done = _train(config)
        _, err = done.communicate(timeout=500)
        assert done.returncode == 0, err.decode()[-2000:]
        runs[name] = tmp_path / name
    plain, zero = ([v[0] for _, v in sorted(_losses(runs[n]).items())] for n in ("plain", "zero3"))
    assert len(zero) == 6 and zero == pytest.approx(plain, rel=2e-3)
    assert (runs["zero3"] / "state" / "step-6" / "deepspeed").is_dir()
    final = "checkpoints/step-6"
    assert json.loads((runs["zero3"] / final / "config.json").read_text())["model_type"] == "internlm2"
    ids = torch.randint(3, 300, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(
            load_reference(runs["zero3"] / final)(ids, use_cache=False).logits,
            load_reference(runs["plain"] / final)(ids, use_cache=False).logits,
            atol=2e-3,
            rtol=0,
        )
