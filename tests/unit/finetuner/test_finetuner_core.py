from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from contracts.events import FinetuneSpec, LoraSpec
from services.finetuner.core import (
    DataError,
    InvalidInput,
    UnsupportedRequest,
    dataset_digest,
    run_finetune,
    validate,
)

SPEC = FinetuneSpec(
    max_steps=30, micro_batch_size=8, seq_len=96, learning_rate=1e-2, lora=LoraSpec(r=8, alpha=16)
)


def test_lora_lowers_loss_and_outputs_load(tiny_base: Path, chat_file: Path, tmp_path: Path) -> None:
    fractions: list[float] = []
    out = run_finetune(
        tiny_base,
        chat_file,
        SPEC,
        tmp_path / "run",
        base_ref={"model_name": "tiny", "version": 1},
        device="cpu",
        progress=lambda stage, fraction, message="", **m: fractions.append(fraction),
    )
    assert out.steps == 30
    assert out.metrics["eval_loss_after"] < out.metrics["eval_loss_before"] - 0.3
    assert fractions[-1] == pytest.approx(1.0) or fractions[-1] == pytest.approx(0.95)

    lineage = json.loads((out.model_dir / "lineage.json").read_text())
    assert lineage["base"] == {"model_name": "tiny", "version": 1}
    assert lineage["dataset"]["sha256"] == dataset_digest(chat_file)
    assert lineage["method"] == "lora" and lineage["hyperparameters"]["max_steps"] == 30
    assert (out.adapter_dir / "lineage.json").is_file()

    # The merged model loads as a plain transformers model and has learned the chat.
    tok = AutoTokenizer.from_pretrained(out.model_dir)
    merged = AutoModelForCausalLM.from_pretrained(out.model_dir)
    assert not any("lora" in name for name, _ in merged.named_parameters())
    base = AutoModelForCausalLM.from_pretrained(tiny_base)
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base), out.adapter_dir)
    text = tok.apply_chat_template(
        [
            {"role": "user", "content": "Tell me about Aldoria."},
            {"role": "assistant", "content": "The capital"},
        ],
        tokenize=False,
    )
    ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        merged_loss = merged(input_ids=ids, labels=ids).loss
        adapter_loss = adapted(input_ids=ids, labels=ids).loss
        base_loss = base(input_ids=ids, labels=ids).loss
    # adapter on base == merged model; both better than the untouched base
    assert float(adapter_loss) == pytest.approx(float(merged_loss), rel=1e-3)
    assert float(merged_loss) < float(base_loss)


def test_refusals_happen_before_loading(tmp_path: Path, chat_file: Path) -> None:
    with pytest.raises(UnsupportedRequest, match="QLoRA needs a CUDA GPU"):
        validate(FinetuneSpec(method="qlora"))
    with pytest.raises(UnsupportedRequest, match="unknown finetuning method"):
        validate(FinetuneSpec.model_construct(method="magic"))  # past the contract's own check
    if not torch.cuda.is_available():
        with pytest.raises(UnsupportedRequest, match="no CUDA GPU"):
            validate(SPEC, device="cuda")
    with pytest.raises(InvalidInput, match="not a Hugging Face model folder"):
        run_finetune(tmp_path, chat_file, SPEC, tmp_path / "out", device="cpu")


def test_bad_data_refused(tiny_base: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    with pytest.raises(DataError, match=r"line 1: .*no assistant message"):
        run_finetune(tiny_base, bad, SPEC, tmp_path / "out", device="cpu")
    assert not (tmp_path / "out").exists()
