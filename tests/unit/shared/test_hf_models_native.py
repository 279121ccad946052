"""Families transformers implements, through puyu's loader, against transformers' own classes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    MixtralConfig,
    MixtralForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen2MoeConfig,
    Qwen2MoeForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from shared.errors import Refusal
from shared.hf_models import UnsupportedModel, load_causal_lm, load_tokenizer, resolve_dtype, save_in_format
from shared.hf_models import formats as formats_module
from tests.support.hf_folders import randomize

ATOL = 1e-5
TINY = {
    "vocab_size": 300,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 64,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
}
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 500000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
}
CASES = {
    "llama3-rope": (LlamaForCausalLM, LlamaConfig(**TINY, rope_parameters=LLAMA3_ROPE)),
    "llama-linear": (
        LlamaForCausalLM,
        LlamaConfig(**TINY, rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}),
    ),
    "llama-dynamic": (
        LlamaForCausalLM,
        LlamaConfig(
            **{**TINY, "max_position_embeddings": 16},
            rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0},
        ),
    ),
    "llama-tied": (LlamaForCausalLM, LlamaConfig(**TINY, tie_word_embeddings=True)),
    "mistral": (MistralForCausalLM, MistralConfig(**TINY, sliding_window=None)),
    "qwen2-biases": (Qwen2ForCausalLM, Qwen2Config(**TINY)),
    "qwen3-qk-norm": (Qwen3ForCausalLM, Qwen3Config(**TINY, head_dim=32)),
    "qwen2-moe": (
        Qwen2MoeForCausalLM,
        Qwen2MoeConfig(
            **TINY,
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=32,
            shared_expert_intermediate_size=64,
        ),
    ),
    "mixtral": (MixtralForCausalLM, MixtralConfig(**TINY, num_local_experts=4, num_experts_per_tok=2)),
}


@pytest.fixture(params=sorted(CASES))
def native_folder(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    """A random-weight checkpoint written by transformers itself; the in-memory model is the reference."""
    model_class, config = CASES[request.param]
    torch.manual_seed(0)
    reference = model_class(config)
    randomize(reference, seed=3)
    if config.tie_word_embeddings:
        reference.tie_weights()
    reference.save_pretrained(tmp_path / request.param)
    return tmp_path / request.param, reference.eval()


def test_logits_and_greedy_tokens_match_transformers(native_folder: tuple[Path, torch.nn.Module]) -> None:
    folder, reference = native_folder
    model, fmt = load_causal_lm(folder, dtype=torch.float32)
    assert type(model) is type(reference) and not fmt.converted and not fmt.remote_code
    assert fmt.model_type == reference.config.model_type
    ids = torch.randint(3, 300, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for length in (7, 40):  # past the dynamic / llama3 original length too
            torch.testing.assert_close(
                model(ids[:, :length]).logits, reference(ids[:, :length]).logits, atol=ATOL, rtol=0
            )
    kwargs = {"max_new_tokens": 12, "min_new_tokens": 12, "do_sample": False, "pad_token_id": 0}
    assert torch.equal(model.generate(ids[:, :9], **kwargs), reference.generate(ids[:, :9], **kwargs))


def test_saved_in_format_transformers_loads_it(
    native_folder: tuple[Path, torch.nn.Module], tmp_path: Path
) -> None:
    folder, reference = native_folder
    model, fmt = load_causal_lm(folder, dtype=torch.float32)
    out = save_in_format(model, None, tmp_path / "saved", fmt)
    assert json.loads((out / "config.json").read_text())["model_type"] == reference.config.model_type
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids = torch.randint(3, 300, (1, 20), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, reference(ids).logits, atol=ATOL, rtol=0)


def test_the_folders_tokenizer_is_loaded_and_saved_with_transformers(tmp_path: Path) -> None:
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"])
    backend.train_from_iterator(["the model reads a folder", "of weights and a tokenizer"] * 50, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    folder = tmp_path / "llama"
    _, config = CASES["llama-tied"]
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)

    loaded = load_tokenizer(folder)
    assert loaded("the model reads")["input_ids"] == tokenizer("the model reads")["input_ids"]
    model, fmt = load_causal_lm(folder, dtype=torch.float32)
    out = save_in_format(model, loaded, tmp_path / "saved", fmt)
    assert (
        load_tokenizer(out)("a folder of weights")["input_ids"]
        == tokenizer("a folder of weights")["input_ids"]
    )


def test_an_unsupported_model_type_is_refused_by_name(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(UnsupportedModel, match="model_type 'gpt2' is not supported") as refused:
        load_causal_lm(tmp_path)
    assert isinstance(refused.value, Refusal)
    with pytest.raises(UnsupportedModel, match="no config\\.json"):
        load_causal_lm(tmp_path / "missing")


def test_dtype_choices(monkeypatch: pytest.MonkeyPatch) -> None:
    bf16_checkpoint = {"torch_dtype": "bfloat16"}
    assert resolve_dtype("float16", "cpu", bf16_checkpoint) is torch.float16
    assert resolve_dtype(torch.float32, "cpu", bf16_checkpoint) is torch.float32
    assert resolve_dtype("auto", "cuda", bf16_checkpoint) is torch.bfloat16
    assert resolve_dtype("auto", "cuda", {"dtype": "float16"}) is torch.float16
    monkeypatch.setattr(formats_module, "cpu_has_native_bf16", lambda: False)
    assert resolve_dtype("auto", "cpu", bf16_checkpoint) is torch.float32
    monkeypatch.setattr(formats_module, "cpu_has_native_bf16", lambda: True)
    assert resolve_dtype("auto", "cpu", {}) is torch.bfloat16
    with pytest.raises(UnsupportedModel, match="float64"):
        resolve_dtype("float64", "cpu", {})


def test_half_precision_load(native_folder: tuple[Path, torch.nn.Module]) -> None:
    folder, _ = native_folder
    model, _ = load_causal_lm(folder, dtype="bfloat16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
