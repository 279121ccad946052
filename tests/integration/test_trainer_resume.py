"""Kill a real ``puyu train`` process with SIGKILL mid-run, resume it, and compare its loss trajectory
with an uninterrupted run of the same config (same batches, same optimizer state, same losses)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from transformers import AutoModelForCausalLM

from contracts.events import ModelArchitecture, TrainSpec

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]

SPEC = TrainSpec(
    architecture=ModelArchitecture(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        vocab_size=300,
    ),
    seq_len=32,
    micro_batch_size=4,
    gradient_accumulation_steps=2,
    max_steps=40,
    warmup_steps=4,
    learning_rate=1e-2,
    checkpoint_interval=5,
    num_threads=1,  # one thread: float sums in a fixed order, so reruns are bit-identical
)


def _config(tmp_path: Path, name: str) -> Path:
    data = tmp_path / "data.jsonl"
    if not data.exists():
        docs = [
            f"Town{i % 9} lies on the river Riv{i % 5}. Its bakers sell bread{i % 4}." for i in range(120)
        ]
        data.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    config = tmp_path / f"{name}.yaml"
    config.write_text(
        yaml.safe_dump({"datasets": [str(data)], "spec": SPEC.model_dump(mode="json"), "out": name})
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
def test_sigkilled_run_resumes_on_the_same_loss_trajectory(tmp_path: Path) -> None:
    straight = _train(_config(tmp_path, "straight"))
    _, err = straight.communicate(timeout=240)
    assert straight.returncode == 0, err.decode()[-2000:]

    run = tmp_path / "killed"
    proc = _train(_config(tmp_path, "killed"))
    deadline = time.monotonic() + 180
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
    assert killed_at < SPEC.max_steps, "the run finished before it could be killed"
    latest = json.loads((run / "state" / "latest.json").read_text())["step"]
    assert latest % 5 == 0 and latest < killed_at

    resumed = _train(_config(tmp_path, "killed"))
    _, err = resumed.communicate(timeout=240)
    assert resumed.returncode == 0, err.decode()[-2000:]

    ref, got = _losses(tmp_path / "straight"), _losses(run)
    assert sorted(got) == list(range(1, SPEC.max_steps + 1))
    for step in range(1, SPEC.max_steps + 1):
        assert ref[step] == [pytest.approx(got[step][-1], rel=1e-6, abs=1e-7)]
        # steps redone after the kill reproduce what the killed process had logged for them
        assert all(loss == pytest.approx(got[step][-1], rel=1e-6, abs=1e-7) for loss in got[step])
    assert any(len(v) == 2 for v in got.values())  # some steps ran twice: it was killed mid-run

    a = AutoModelForCausalLM.from_pretrained(tmp_path / "straight" / "checkpoints" / "step-40").state_dict()
    b = AutoModelForCausalLM.from_pretrained(run / "checkpoints" / "step-40").state_dict()
    assert all((a[k] - b[k]).abs().max() < 1e-5 for k in a)
