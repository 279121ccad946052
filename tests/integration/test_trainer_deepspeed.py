"""The same job through DeepSpeed ZeRO-1 (single CPU process, gloo) and through plain torch:
the same loss trajectory, an HF checkpoint either way, DeepSpeed's sharded state beside ours."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from transformers import AutoModelForCausalLM

from contracts.events import ModelArchitecture, TrainSpec

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,  # DeepSpeed builds its shm comm op on first use
    pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="DeepSpeed is not installed"),
]
ROOT = Path(__file__).resolve().parents[2]


def _run(tmp_path: Path, name: str, zero_stage: int) -> Path:
    data = tmp_path / "data.jsonl"
    if not data.exists():
        docs = [
            f"Town{i % 9} lies on the river Riv{i % 5}. Its bakers sell bread{i % 4}." for i in range(120)
        ]
        data.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    spec = TrainSpec(
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
        max_steps=6,
        warmup_steps=2,
        learning_rate=1e-2,
        checkpoint_interval=3,
        num_threads=1,
        zero_stage=zero_stage,
    )
    config = tmp_path / f"{name}.yaml"
    config.write_text(
        yaml.safe_dump({"datasets": [str(data)], "spec": spec.model_dump(mode="json"), "out": name})
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "services.trainer.cli", "--config", str(config)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=500,
    )
    assert done.returncode == 0, done.stdout.decode()[-2000:] + done.stderr.decode()[-2000:]
    return tmp_path / name


def test_zero1_matches_plain_torch(tmp_path: Path) -> None:
    plain, zero = _run(tmp_path, "plain", 0), _run(tmp_path, "zero1", 1)
    losses = [
        [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
        for run in (plain, zero)
    ]
    assert len(losses[0]) == len(losses[1]) == 6
    assert losses[1] == pytest.approx(losses[0], rel=2e-3)
    assert (zero / "state" / "step-6" / "deepspeed").is_dir()
    model = AutoModelForCausalLM.from_pretrained(zero / "checkpoints" / "step-6")
    assert model.config.num_hidden_layers == 2
