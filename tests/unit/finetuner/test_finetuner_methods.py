from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from contracts.events import FinetuneSpec, LoraSpec
from services.finetuner.core import UnsupportedRequest, run_finetune
from services.finetuner.core.state import STATE_FILE
from services.finetuner.core.validation import check_method
from shared.samples import chat_examples


def _prefs(path: Path, n: int = 48) -> Path:
    """Preference pairs from the sample chats: the true answer over a wrong-world answer."""
    chats = chat_examples(n)
    with open(path, "w") as f:
        for k, rec in enumerate(chats):
            msgs = rec["messages"]  # type: ignore[index]
            wrong = chats[(k + 7) % n]["messages"][-1]["content"]  # type: ignore[index]
            if wrong == msgs[-1]["content"]:
                continue
            f.write(
                json.dumps({"prompt": msgs[:-1], "chosen": msgs[-1]["content"], "rejected": wrong}) + "\n"
            )
    return path


def test_full_finetune_lowers_loss_and_has_no_adapter(
    tiny_base: Path, chat_file: Path, tmp_path: Path
) -> None:
    spec = FinetuneSpec(method="full", max_steps=8, micro_batch_size=4, seq_len=64, learning_rate=3e-3)
    out = run_finetune(tiny_base, chat_file, spec, tmp_path / "run", device="cpu")
    assert out.adapter_dir is None and not (tmp_path / "run" / "adapter").exists()
    assert out.metrics["eval_loss_after"] < out.metrics["eval_loss_before"] - 0.5
    assert out.lineage["method"] == "full" and out.lineage["dataset"]["format"] == "openai"
    AutoModelForCausalLM.from_pretrained(out.model_dir)


def test_dpo_learns_to_prefer_chosen(tiny_base: Path, tmp_path: Path) -> None:
    data = _prefs(tmp_path / "prefs.jsonl", n=16)
    spec = FinetuneSpec(
        method="dpo", max_steps=8, micro_batch_size=4, seq_len=64, learning_rate=2e-2, dpo_beta=0.5
    )
    out = run_finetune(tiny_base, data, spec, tmp_path / "run", device="cpu")
    assert out.metrics["eval_loss_before"] == pytest.approx(0.6931, abs=1e-3)  # policy == reference
    assert out.metrics["eval_loss_after"] < 0.69
    assert out.metrics["eval_pair_accuracy_after"] > out.metrics["eval_pair_accuracy_before"]
    assert out.adapter_dir is not None and (out.adapter_dir / "adapter_config.json").is_file()
    with pytest.raises(ValueError, match="needs preference pairs"):
        run_finetune(tiny_base, _chat(tmp_path), spec, tmp_path / "x", device="cpu")


def _chat(tmp_path: Path) -> Path:
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in chat_examples(8)))
    return path


def test_interrupted_run_resumes_to_the_same_weights(
    tiny_base: Path, chat_file: Path, tmp_path: Path
) -> None:
    spec = FinetuneSpec(
        max_steps=6, micro_batch_size=4, seq_len=64, checkpoint_interval=3, lora=LoraSpec(r=4, alpha=8)
    )
    whole = run_finetune(tiny_base, chat_file, spec, tmp_path / "whole", device="cpu")

    def stop_at_4(stage: str, fraction: float, message: str = "", **m: float) -> None:
        if stage == "train" and message.startswith("step 4/"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_finetune(tiny_base, chat_file, spec, tmp_path / "cut", device="cpu", progress=stop_at_4)
    assert torch.load(tmp_path / "cut" / "state" / STATE_FILE, weights_only=False)["step"] == 4
    resumed = run_finetune(tiny_base, chat_file, spec, tmp_path / "cut", device="cpu")
    assert resumed.lineage["resumed_from_step"] == 4
    a = load_file(whole.adapter_dir / "adapter_model.safetensors")  # type: ignore[operator]
    b = load_file(resumed.adapter_dir / "adapter_model.safetensors")  # type: ignore[operator]
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k])
    # another job in the same folder does not pick up this state
    other = spec.model_copy(update={"learning_rate": 1e-3})
    assert (
        run_finetune(tiny_base, chat_file, other, tmp_path / "cut", device="cpu").lineage["resumed_from_step"]
        is None
    )


def test_text_and_gradient_checkpointing(tiny_base: Path, tmp_path: Path) -> None:
    data = tmp_path / "text.jsonl"
    data.write_text(
        "".join(json.dumps({"text": f"Aldoria exports silk, year {i}."}) + "\n" for i in range(40))
    )
    spec = FinetuneSpec(
        max_steps=8, micro_batch_size=4, seq_len=64, learning_rate=1e-2, gradient_checkpointing=True
    )
    out = run_finetune(tiny_base, data, spec, tmp_path / "run", device="cpu")
    assert out.lineage["dataset"]["format"] == "text"
    assert out.metrics["eval_loss_after"] < out.metrics["eval_loss_before"]


def test_qlora_is_refused_without_cuda(tmp_path: Path, chat_file: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: QLoRA is allowed")
    with pytest.raises(UnsupportedRequest, match="QLoRA needs a CUDA GPU"):
        check_method("qlora", "cpu")
    spec = FinetuneSpec(method="qlora")
    with pytest.raises(UnsupportedRequest, match="QLoRA needs a CUDA GPU"):
        run_finetune(tmp_path / "no-model", chat_file, spec, tmp_path / "out", device="auto")
    assert not (tmp_path / "out").exists()  # refused before anything was loaded or written
