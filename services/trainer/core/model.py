"""The model: a Llama-family decoder (GQA, RoPE with scaling, RMSNorm, SwiGLU) built from the spec,
or an existing checkpoint to train further (``pretrained.PretrainedLM``, see ``TrainSpec.init_from``).

A model built from the spec trains in puyu's own layout (``llama.PuyuLlama``); its checkpoints are
HF ``LlamaForCausalLM`` folders, written from the converted weights so that ``AutoModelForCausalLM``
loads them as they are. A checkpoint trained further is saved in the layout it came in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from transformers import GenerationConfig, LlamaConfig

from contracts.events import ModelArchitecture
from services.trainer.core.llama import PuyuLlama, from_hf_state_dict, to_hf_state_dict
from services.trainer.core.pretrained import PretrainedLM

# What the engines train: both take (input_ids, labels, position_ids) and return (logits, loss).
TrainableModel = PuyuLlama | PretrainedLM


def llama_config(arch: ModelArchitecture, tokenizer: Any) -> LlamaConfig:
    # The embedding matches the real vocabulary: a trained BPE may stop short of the requested size.
    rope = {"rope_type": "default", "rope_theta": arch.rope_theta, **(arch.rope_scaling or {})}
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=arch.hidden_size,
        intermediate_size=arch.intermediate_size,
        num_hidden_layers=arch.num_hidden_layers,
        num_attention_heads=arch.num_attention_heads,
        num_key_value_heads=arch.num_key_value_heads,
        max_position_embeddings=arch.max_position_embeddings,
        rope_parameters=rope,
        tie_word_embeddings=arch.tie_word_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        rms_norm_eps=1e-5,
        initializer_range=0.02,
    )


def build_model(
    arch: ModelArchitecture, tokenizer: Any, seed: int, activation_checkpointing: bool = False
) -> PuyuLlama:
    torch.manual_seed(seed)
    return PuyuLlama(llama_config(arch, tokenizer), activation_checkpointing)


def load_model(checkpoint: Path, activation_checkpointing: bool = False) -> PuyuLlama:
    """A saved HF checkpoint folder back into the training layout (for resuming)."""
    config = LlamaConfig.from_pretrained(checkpoint)
    model = PuyuLlama(config, activation_checkpointing)
    from_hf_state_dict(model, load_file(str(checkpoint / "model.safetensors")))
    return model


def save_hf(model: PuyuLlama, dest: Path) -> None:
    """Write config.json, generation_config.json and model.safetensors of LlamaForCausalLM."""
    from safetensors.torch import save_file

    dest.mkdir(parents=True, exist_ok=True)
    config: LlamaConfig = model.config
    config.architectures = ["LlamaForCausalLM"]
    config.save_pretrained(dest)
    GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id
    ).save_pretrained(dest)
    weights = {k: v.to("cpu", torch.float32) for k, v in to_hf_state_dict(model).items()}
    save_file(weights, str(dest / "model.safetensors"), metadata={"format": "pt"})


def save_model(model: TrainableModel, tokenizer: Any, dest: Path) -> None:
    """Weights, config and tokenizer of a checkpoint folder."""
    if isinstance(model, PretrainedLM):
        model.save(dest, tokenizer)
        return
    save_hf(model, dest)
    tokenizer.save_pretrained(dest)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def flops_per_token(model: TrainableModel, seq_len: int) -> float:
    """Training FLOPs per token (6N for the matmuls + 12·L·d·T for attention, PaLM appendix B)."""
    cfg = model.config
    n = count_parameters(model) - (0 if cfg.tie_word_embeddings else cfg.vocab_size * cfg.hidden_size)
    return 6.0 * n + 12.0 * cfg.num_hidden_layers * cfg.hidden_size * seq_len
