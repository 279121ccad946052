"""The same job through DeepSpeed ZeRO-1/2/3 (single CPU process, gloo), through DDP on two ranks
(torchrun, gloo) and through plain torch: the same loss trajectory, an HF checkpoint either way,
DeepSpeed's sharded state beside ours."""

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


def _run(tmp_path: Path, name: str, zero_stage: int, ranks: int = 1) -> Path:
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
        global_batch_size=8,  # two micro batches per step on one rank, one each on two ranks
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
    launcher = [sys.executable]
    if ranks > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}"]
    done = subprocess.run(
        [*launcher, "-m", "services.trainer.cli", "--config", str(config)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=500,
    )
    assert done.returncode == 0, done.stdout.decode()[-2000:] + done.stderr.decode()[-2000:]
    return tmp_path / name


def _losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _run(tmp_path_factory.mktemp("plain"), "plain", 0)


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_zero_matches_plain_torch(plain: Path, tmp_path: Path, stage: int) -> None:
    zero = _run(tmp_path, f"zero{stage}", stage)
    assert len(_losses(plain)) == len(_losses(zero)) == 6
    assert _losses(zero) == pytest.approx(_losses(plain), rel=2e-3)
    assert (zero / "state" / "step-6" / "deepspeed").is_dir()
    model = AutoModelForCausalLM.from_pretrained(zero / "checkpoints" / "step-6")  # ZeRO-3: gathered
    assert model.config.num_hidden_layers == 2


def test_ddp_on_two_ranks_matches_one_process(plain: Path, tmp_path: Path) -> None:
    """The global batch split over two ranks (torchrun) trains as one process accumulating it."""
    ddp = _run(tmp_path, "ddp", 0, ranks=2)
    assert _losses(ddp) == pytest.approx(_losses(plain), rel=2e-3)
    AutoModelForCausalLM.from_pretrained(ddp / "checkpoints" / "step-6")
