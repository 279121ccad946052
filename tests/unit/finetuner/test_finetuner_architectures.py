"""A LoRA finetune of every family the finetuner opens, against an independent reference.

For each architecture a tiny random-weight folder (tests/model_references.py) is finetuned with
LoRA: the held-out loss goes down, the merged folder is in the base's own format, and that folder
read by the reference (transformers' own class, or XTuner's original InternLM code) gives the
logits of puyu's merged model and the same greedy tokens.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from contracts.events import FinetuneSpec, LoraSpec
from services.finetuner.core import export as export_module
from services.finetuner.core import run_finetune
from shared.hf_models import load_tokenizer
from tests.support.model_references import (
    ARCHITECTURES,
    INTERNLM,
    build_folder,
    load_reference,
    reference_greedy,
)

ATOL = 1e-4  # fp32; observed differences are ~1e-6
SPEC = FinetuneSpec(
    method="lora",
    max_steps=12,
    micro_batch_size=4,
    seq_len=96,
    learning_rate=1e-2,
    lora=LoraSpec(r=8, alpha=16, dropout=0.0),
    seed=0,
)
# Every adapted module by the base's own names: InternLM2's are mapped onto the loaded Llama's.
TARGETS = {"internlm2": ["wqkv", "wo", "w1", "w2", "w3"]}
LLAMA_TARGETS = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
# transformers keeps a mixture's experts as fused tensors: LoRA adapts attention (and a shared expert).
EXPECTED_TARGETS = {
    "qwen2_moe": LLAMA_TARGETS,  # the shared expert's MLP
    "mixtral": ["k_proj", "o_proj", "q_proj", "v_proj"],
}


@pytest.fixture(params=ARCHITECTURES)
def base(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, Path]:
    return request.param, build_folder(tmp_path / f"base-{request.param}", request.param, request)


def test_lora_finetune_and_merge_match_the_reference(
    base: tuple[str, Path], chat_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    architecture, base_dir = base
    merged_in_memory: list[Any] = []
    save_model = export_module.save_model

    def keep_merged(model: Any, *args: Any, **kwargs: Any) -> Path:
        merged_in_memory.append(model)
        return save_model(model, *args, **kwargs)

    monkeypatch.setattr(export_module, "save_model", keep_merged)
    spec = SPEC
    if architecture in TARGETS:
        spec = SPEC.model_copy(
            update={"lora": SPEC.lora.model_copy(update={"target_modules": TARGETS[architecture]})}
        )
    outcome = run_finetune(base_dir, chat_file, spec, tmp_path / "run", device="cpu")

    assert outcome.lineage["lora_target_modules"] == EXPECTED_TARGETS.get(architecture, LLAMA_TARGETS)
    assert outcome.metrics["eval_loss_after"] < outcome.metrics["eval_loss_before"] - 0.05, outcome.metrics
    model_dir = outcome.model_dir
    config = json.loads((model_dir / "config.json").read_text())
    assert config["model_type"] == architecture
    if architecture in INTERNLM:  # InternLM's layout, its code and SentencePiece tokenizer along
        assert config["auto_map"] == json.loads((base_dir / "config.json").read_text())["auto_map"]
        assert (model_dir / "tokenizer.model").read_bytes() == (base_dir / "tokenizer.model").read_bytes()
    text = "What is 12 plus 30? The model reads numbers."
    assert load_tokenizer(model_dir)(text)["input_ids"] == load_tokenizer(base_dir)(text)["input_ids"]

    (merged,) = merged_in_memory
    merged.eval()
    reference = load_reference(model_dir)
    ids = torch.randint(3, 300, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference(ids, use_cache=False).logits
        torch.testing.assert_close(merged(ids, use_cache=False).logits, expected, atol=ATOL, rtol=0)
        # the finetune changed the model: the merged folder is not the base
        assert (load_reference(base_dir)(ids, use_cache=False).logits - expected).abs().max() > 1e-2
    prompt = ids[:, :9]
    got = merged.generate(prompt, max_new_tokens=12, min_new_tokens=12, do_sample=False, pad_token_id=0)
    assert torch.equal(got, reference_greedy(reference, prompt, 12))
