"""Tiny random-weight model folders of every family ``shared.hf_models`` opens, each with a tokenizer,
and the independent references that read them: transformers' own classes for the families it
implements, and for InternLM2/InternLM3 the original modeling code that XTuner ships (run as the
folder's remote code, only here).

The XTuner and SentencePiece downloads, ``randomize``, ``build_original`` and ``load_original`` are
those of ``tests/support/hf_folders.py``; ``build_folder`` takes its session fixtures through the
test's ``request`` (a conftest or the test module imports them).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    MixtralConfig,
    MixtralForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen2MoeConfig,
    Qwen2MoeForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from tests.support import hf_folders as hf_references

MAX_POSITIONS = 128
PAD, BOS, EOS = 0, 1, 2
TINY: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": MAX_POSITIONS,
    "pad_token_id": PAD,
    "bos_token_id": BOS,
    "eos_token_id": EOS,
}
NATIVE: dict[str, tuple[type[PreTrainedModel], type[PretrainedConfig], dict[str, Any]]] = {
    "llama": (
        LlamaForCausalLM,
        LlamaConfig,
        {
            "rope_parameters": {
                "rope_type": "llama3",
                "rope_theta": 500000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16,
            }
        },
    ),
    "mistral": (MistralForCausalLM, MistralConfig, {"sliding_window": None}),
    "qwen2": (Qwen2ForCausalLM, Qwen2Config, {}),  # q/k/v biases
    "qwen3": (Qwen3ForCausalLM, Qwen3Config, {"head_dim": 32}),  # q/k norms
    "qwen2_moe": (
        Qwen2MoeForCausalLM,
        Qwen2MoeConfig,
        {
            "num_experts": 4,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": 32,
            "shared_expert_intermediate_size": 64,
        },
    ),
    "mixtral": (MixtralForCausalLM, MixtralConfig, {"num_local_experts": 4, "num_experts_per_tok": 2}),
}
INTERNLM: dict[str, dict[str, Any]] = {
    # InternLM2.5's layout: grouped fused wqkv, dynamic NTK rope.
    "internlm2": {
        "model_type": "internlm2",
        "vocab_size": 512,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
        "max_position_embeddings": MAX_POSITIONS,
        "rms_norm_eps": 1e-5,
        "rope_theta": 1000000,
        "rope_scaling": {"type": "dynamic", "factor": 2.0},
        "bias": False,
        "tie_word_embeddings": False,
        "attn_implementation": "eager",
        "pad_token_id": EOS,
        "bos_token_id": BOS,
        "eos_token_id": EOS,
        "torch_dtype": "float32",
    },
    # InternLM3's: head_dim apart from hidden_size / heads, bf16 checkpoint.
    "internlm3": {
        "model_type": "internlm3",
        "vocab_size": 512,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 24,
        "max_position_embeddings": MAX_POSITIONS,
        "rms_norm_eps": 1e-5,
        "rope_theta": 50000000,
        "rope_scaling": {"rope_type": "dynamic", "factor": 6.0},
        "qkv_bias": False,
        "bias": False,
        "tie_word_embeddings": False,
        "pad_token_id": EOS,
        "bos_token_id": BOS,
        "eos_token_id": EOS,
        "torch_dtype": "bfloat16",
    },
}
ARCHITECTURES = [*NATIVE, *INTERNLM]


def train_byte_level_bpe(vocab_size: int = 400) -> Tokenizer:
    """A byte-level BPE tokenizer as Llama 3 and Qwen ship them: <pad> <s> </s> first."""
    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(hf_references.corpus()), trainer)
    assert [tokenizer.token_to_id(t) for t in ("<pad>", "<s>", "</s>")] == [PAD, BOS, EOS]
    return tokenizer


def write_native(folder: Path, architecture: str, tokenizer: Tokenizer, seed: int = 3) -> Path:
    """A random-weight folder of a family transformers implements, written by transformers itself."""
    model_class, config_class, extra = NATIVE[architecture]
    torch.manual_seed(0)
    config = config_class(**{**TINY, **extra, "vocab_size": tokenizer.get_vocab_size()})
    model = model_class(config)
    hf_references.randomize(model, seed=seed)
    model.save_pretrained(folder)
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    ).save_pretrained(folder)
    return folder


def build_native(folder: Path, architecture: str, seed: int = 3) -> Path:
    """A random-weight folder written by transformers itself, with a byte-level BPE tokenizer."""
    return write_native(folder, architecture, train_byte_level_bpe(), seed=seed)


def build_internlm(
    folder: Path, architecture: str, modelings: Path, sentencepiece: ModuleType, sentencepiece_model: bytes
) -> Path:
    """A random-weight folder written by XTuner's original InternLM code, with a SentencePiece
    tokenizer (and chat template) as InternLM ships it."""
    hf_references.build_original(folder, modelings, INTERNLM[architecture], seed=7)
    (folder / "tokenizer.model").write_bytes(sentencepiece_model)
    processor = sentencepiece.SentencePieceProcessor(model_proto=sentencepiece_model)
    pieces = [processor.id_to_piece(i) for i in range(processor.get_piece_size())]
    tokenizer_class = {"internlm2": "InternLM2Tokenizer", "internlm3": "InternLM3Tokenizer"}[architecture]
    tokenizer_config = {**hf_references.internlm_tokenizer_config(pieces), "tokenizer_class": tokenizer_class}
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config), encoding="utf-8")
    return folder


def build_folder(folder: Path, architecture: str, request: pytest.FixtureRequest) -> Path:
    """A tiny folder of ``architecture``; InternLM ones take the session fixtures through ``request``."""
    if architecture in NATIVE:
        return build_native(folder, architecture)
    return build_internlm(
        folder,
        architecture,
        request.getfixturevalue("xtuner_modelings"),
        request.getfixturevalue("sentencepiece"),
        request.getfixturevalue("internlm_sentencepiece_model"),
    )


def load_reference(folder: Path) -> torch.nn.Module:
    """The folder's model read by the independent reference, eager attention, fp32, eval mode:
    transformers' class for its ``model_type``, or the folder's original InternLM code."""
    model_type = json.loads((folder / "config.json").read_text(encoding="utf-8"))["model_type"]
    if model_type in INTERNLM:
        return hf_references.load_original(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager")
    assert model.config.model_type == model_type
    return model.eval()


def reference_greedy(model: torch.nn.Module, prompt: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """Greedy decoding the plain way (the whole sequence every step, no cache), as the original
    InternLM code runs without one."""
    ids = prompt
    with torch.no_grad():
        for _ in range(new_tokens):
            logits = model(ids, use_cache=False).logits[:, -1]
            ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
    return ids


def packed_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> float:
    """The mean next-token cross-entropy of a packed training batch (input_ids, labels -100 where
    ignored, position_ids restarting at 0 where a document starts), each document run through
    ``model`` on its own: the reference for per-document attention, which needs no mask."""
    rows = []
    with torch.no_grad():
        for ids, positions in zip(batch["input_ids"], batch["position_ids"], strict=True):
            starts = [0, *(i for i in range(1, len(positions)) if int(positions[i]) == 0)]
            ends = [*starts[1:], len(ids)]
            parts = [
                model(ids[None, a:b], position_ids=positions[None, a:b], use_cache=False).logits[0]
                for a, b in zip(starts, ends, strict=True)
            ]
            rows.append(torch.cat(parts))
    logits = torch.stack(rows).float()
    targets = batch["labels"][:, 1:]
    loss = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100
    )
    return float(loss)
