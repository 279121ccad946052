"""Data-parallel finetuning across two torchrun ranks (gloo on the CPU) against one process on the
whole global batch, computed here with plain transformers + peft + torch (none of puyu's loop).

Each rank trains on half of every global batch; DDP (or DeepSpeed ZeRO) averages the gradients.
With examples of unequal length the ranks hold unequal token counts, so only a loss weighted by the
global token count gives the single-process update: the reference takes the mean token loss over
the whole batch, as transformers' own ``labels=`` loss does.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import LoraConfig, TaskType, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from contracts.events import FinetuneSpec, LoraSpec
from services.finetuner.core.runs import RUN_MODULE, RunInputs
from shared.launch import read_error, read_progress, read_result, write_spec
from tests.support.tiny_model import build_tiny_model, sentences

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]
ROOT = Path(__file__).resolve().parents[2]
RANKS, MICRO, STEPS, LR = 2, 4, 3, 1e-2
HAS_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[str]]:
    root = tmp_path_factory.mktemp("ddp-inputs")
    base = build_tiny_model(root / "base", sentences(), max_positions=256)
    # One global batch is the whole data set (RANKS x MICRO texts), of lengths from 6 to 40 words:
    # whatever the shuffle, the two ranks hold unequal numbers of tokens.
    words = " ".join(sentences(40)).split()
    texts = [" ".join(words[i * 7 : i * 7 + 6 + 5 * i]) for i in range(RANKS * MICRO)]
    data = root / "text.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return base, data, texts


def _spec(method: str, zero_stage: int = 0) -> FinetuneSpec:
    return FinetuneSpec(
        method=method,  # type: ignore[arg-type]
        max_steps=STEPS,
        micro_batch_size=MICRO,
        seq_len=128,
        learning_rate=LR,
        packing=False,
        data_format="text",
        lora=LoraSpec(r=4, alpha=8, dropout=0.0),
        zero_stage=zero_stage,
    )


def _torchrun(run_dir: Path, base: Path, data: Path, spec: FinetuneSpec) -> dict[str, Any]:
    inputs = RunInputs("job", spec, base, data, {"path": str(base)}, str(data), device="cpu", num_threads=1)
    write_spec(run_dir, inputs.to_json())
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={RANKS}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [*cmd, "-m", RUN_MODULE, "--run-dir", str(run_dir)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=600,
    )
    assert done.returncode == 0, f"{read_error(run_dir)}\n{done.stderr.decode()[-4000:]}"
    result = read_result(run_dir)
    assert result is not None
    return {"result": result, "progress": list(read_progress(run_dir))}


def _rows(base: Path, texts: list[str]) -> list[list[int]]:
    tokenizer = AutoTokenizer.from_pretrained(base)
    return [
        [tokenizer.bos_token_id, *tokenizer(t, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]
        for t in texts
    ]


def _reference(
    base: Path, texts: list[str], spec: FinetuneSpec
) -> tuple[dict[str, torch.Tensor], list[float]]:
    """STEPS AdamW steps of one process on the whole global batch: BOS + text + EOS rows, padded,
    transformers' mean token loss, gradients clipped to 1.0, the learning rate constant (the
    finetuner's warm-up is max(1, steps // 10) = 1 step)."""
    rows = _rows(base, texts)
    width = max(map(len, rows))
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    labels = ids.masked_fill(mask == 0, -100)

    torch.manual_seed(spec.seed)  # the finetuner seeds LoRA's initial weights the same way
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    if spec.method == "lora":
        lora = spec.lora
        config = LoraConfig(
            task_type=TaskType.CAUSAL_LM,
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=lora.target_modules,
        )
        model = get_peft_model(model, config)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=spec.learning_rate, weight_decay=0.0)
    losses = []
    model.train()
    for _ in range(spec.max_steps):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
    if spec.method == "lora":
        from peft import get_peft_model_state_dict

        return {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}, losses
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, losses


def _compare(trained: dict[str, torch.Tensor], reference: dict[str, torch.Tensor], name: str) -> None:
    assert reference.keys() <= trained.keys(), name
    # Adam divides by sqrt(v): where a gradient is near zero, the order of the float sums (two ranks'
    # all-reduce against one batch, and the CPU's own kernels: AVX2 and AVX-512 sum differently) moves
    # a weight by a small part of one step. 1% of a step (LR / 100) bounds that, and is far below what
    # a wrong global batch (one rank's data, a sum for a mean) changes: whole steps.
    for key, ref in reference.items():
        torch.testing.assert_close(
            trained[key], ref, atol=LR / 100, rtol=1e-3, msg=lambda m, k=key: f"{name} {k}: {m}"
        )


@pytest.mark.parametrize(
    "zero_stage",
    [0, pytest.param(2, marks=pytest.mark.skipif(not HAS_DEEPSPEED, reason="DeepSpeed is not installed"))],
)
def test_two_rank_lora_equals_one_process_on_the_global_batch(
    tmp_path: Path, inputs: tuple[Path, Path, list[str]], zero_stage: int
) -> None:
    base, data, texts = inputs
    spec = _spec("lora", zero_stage)
    run = _torchrun(tmp_path / "run", base, data, spec)
    reference, ref_losses = _reference(base, texts, spec)

    result = run["result"]
    assert result.step == STEPS and result.extra["world_size"] == RANKS
    adapter = load_file(Path(result.extra["adapter"]) / "adapter_model.safetensors")
    assert len(adapter) == len(reference) > 0
    lora_b = [k for k in reference if "lora_B" in k]
    assert all(reference[k].abs().sum() > 0 for k in lora_b)  # the steps moved the adapter
    _compare(adapter, reference, f"zero{zero_stage}")
    # The losses reported are the global batch's: the reference's, step by step.
    steps = [r for r in run["progress"] if r["stage"] == "train"]
    assert [r["message"] for r in steps] == [f"step {i}/{STEPS}" for i in range(1, STEPS + 1)]
    assert [r["loss"] for r in steps] == pytest.approx(ref_losses, rel=1e-4)
    lineage = json.loads((Path(result.checkpoint) / "lineage.json").read_text())
    assert lineage["world_size"] == RANKS
    # every rank's tokens counted: each step saw the whole data set
    assert result.metrics["tokens_seen"] == STEPS * sum(map(len, _rows(base, texts)))


@pytest.mark.parametrize(
    "zero_stage",
    [0, pytest.param(3, marks=pytest.mark.skipif(not HAS_DEEPSPEED, reason="DeepSpeed is not installed"))],
)
def test_two_rank_full_finetune_equals_one_process_on_the_global_batch(
    tmp_path: Path, inputs: tuple[Path, Path, list[str]], zero_stage: int
) -> None:
    base, data, texts = inputs
    spec = _spec("full", zero_stage)
    run = _torchrun(tmp_path / "run", base, data, spec)
    reference, _ = _reference(base, texts, spec)
    result = run["result"]
    assert result.extra["adapter"] is None
    merged = load_file(Path(result.checkpoint) / "model.safetensors")
    moved = [k for k in merged if not torch.equal(merged[k], load_file(base / "model.safetensors")[k])]
    assert moved  # the weights changed
    _compare(merged, {k: v for k, v in reference.items() if k in merged}, f"full, zero{zero_stage}")
