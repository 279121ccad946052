"""InternLM2 / InternLM2.5 as transformers' Llama, and back.

InternLM2 is Llama with other names and one fused attention input projection. ``wqkv`` holds, for
each key-value head in turn, the rows of the query heads that share it, then its key rows, then its
value rows (the original code splits it with ``rearrange('b q (h gs d) -> b q h gs d', gs=groups + 2)``).
``bias`` puts biases on ``wqkv`` and ``wo`` only, as Llama's ``attention_bias`` does on q/k/v/o; the
MLP never has one. Rope scaling is ``{"type": "linear"|"dynamic", "factor": f}``; its dynamic NTK
formula is transformers' (the original keeps the enlarged base after a long sequence, transformers
returns to the trained one below ``max_position_embeddings``, which is what the model was trained for).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from transformers import LlamaConfig

from shared.hf_models.formats import UnsupportedModel
from shared.hf_models.rope import from_rope_parameters, to_rope_parameters

MODEL_TYPE = "internlm2"
_ROPE_TYPES = frozenset({"linear", "dynamic"})

# InternLM2 module (after "model.layers.N.") -> Llama module, for every module but the fused wqkv.
LAYER_MODULES = {
    "attention.wo": "self_attn.o_proj",
    "feed_forward.w1": "mlp.gate_proj",
    "feed_forward.w3": "mlp.up_proj",
    "feed_forward.w2": "mlp.down_proj",
    "attention_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
# InternLM2 tensor name (after "model.layers.N.") -> Llama name; only wo has a bias.
_LAYER_NAMES = {
    f"{module}.{kind}": f"{LAYER_MODULES[module]}.{kind}"
    for module in LAYER_MODULES
    for kind in (("weight", "bias") if module == "attention.wo" else ("weight",))
}
TOP_NAMES = {
    "model.tok_embeddings.weight": "model.embed_tokens.weight",
    "model.norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)")
# Older checkpoints saved the rotary tables; they are recomputed from the config.
DERIVED = re.compile(r".*rotary_emb\.inv_freq$")

# Structural fields that mean the same in both configs.
_SHARED_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "hidden_act",
    "max_position_embeddings",
    "initializer_range",
    "rms_norm_eps",
    "pad_token_id",
    "bos_token_id",
    "eos_token_id",
    "tie_word_embeddings",
)


def to_llama_config(source: Mapping[str, Any]) -> LlamaConfig:
    heads = int(source.get("num_attention_heads", 32))
    kv_heads = int(source.get("num_key_value_heads") or heads)
    hidden = int(source.get("hidden_size", 4096))
    if hidden % heads or heads % kv_heads:
        raise UnsupportedModel(
            f"internlm2 with hidden_size {hidden}, {heads} heads and {kv_heads} key-value heads is inconsistent"
        )
    fields: dict[str, Any] = {
        # The defaults of InternLM2's own configuration class, for fields a config.json leaves out.
        "vocab_size": 103168,
        "intermediate_size": 11008,
        "num_hidden_layers": 32,
        "hidden_act": "silu",
        "max_position_embeddings": 2048,
        "initializer_range": 0.02,
        "rms_norm_eps": 1e-6,
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "tie_word_embeddings": False,
    }
    fields.update({k: source[k] for k in _SHARED_FIELDS if k in source})
    fields.update(hidden_size=hidden, num_attention_heads=heads, num_key_value_heads=kv_heads)
    return LlamaConfig(
        **fields,
        head_dim=hidden // heads,
        attention_bias=bool(source.get("bias", True)),
        mlp_bias=False,
        rope_parameters=to_rope_parameters(
            source.get("rope_theta", 10000), source.get("rope_scaling"), _ROPE_TYPES, MODEL_TYPE
        ),
        architectures=["LlamaForCausalLM"],
    )


def from_llama_config(config: LlamaConfig, source: Mapping[str, Any]) -> dict[str, Any]:
    """The InternLM2 config.json for ``config``: the source's, with the structural fields of ``config``."""
    out = dict(source)
    out.update({k: getattr(config, k) for k in _SHARED_FIELDS})
    out["bias"] = bool(config.attention_bias)
    params = dict(config.rope_parameters or {})
    if params != to_rope_parameters(
        source.get("rope_theta", 10000), source.get("rope_scaling"), _ROPE_TYPES, MODEL_TYPE
    ):
        out["rope_theta"], out["rope_scaling"] = from_rope_parameters(params, "type")
    out["model_type"] = MODEL_TYPE
    return out


def _heads(config: LlamaConfig) -> tuple[int, int, int]:
    """(key-value heads, query heads per key-value head, head dim)."""
    kv_heads = int(config.num_key_value_heads or config.num_attention_heads)
    return kv_heads, int(config.num_attention_heads) // kv_heads, int(config.head_dim or 0)


def split_wqkv(fused: torch.Tensor, config: LlamaConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    kv_heads, groups, head_dim = _heads(config)
    rest = fused.shape[1:]
    grouped = fused.reshape(kv_heads, groups + 2, head_dim, *rest)
    q = grouped[:, :groups].reshape(kv_heads * groups * head_dim, *rest)
    k = grouped[:, groups].reshape(kv_heads * head_dim, *rest)
    v = grouped[:, groups + 1].reshape(kv_heads * head_dim, *rest)
    return q, k, v


def fuse_wqkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, config: LlamaConfig) -> torch.Tensor:
    kv_heads, groups, head_dim = _heads(config)
    rest = q.shape[1:]
    grouped = torch.cat(
        [
            q.reshape(kv_heads, groups, head_dim, *rest),
            k.reshape(kv_heads, 1, head_dim, *rest),
            v.reshape(kv_heads, 1, head_dim, *rest),
        ],
        dim=1,
    )
    return grouped.reshape(kv_heads * (groups + 2) * head_dim, *rest)


def to_llama_state(
    tensors: Iterable[tuple[str, torch.Tensor]], config: LlamaConfig
) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for name, tensor in tensors:
        if DERIVED.match(name):
            continue
        if name in TOP_NAMES:
            state[TOP_NAMES[name]] = tensor
            continue
        match = LAYER.fullmatch(name)
        if match is None:
            raise UnsupportedModel(f"internlm2 checkpoint has an unexpected tensor {name!r}")
        layer, rest = match.groups()
        prefix = f"model.layers.{layer}."
        if rest in ("attention.wqkv.weight", "attention.wqkv.bias"):
            kind = rest.rsplit(".", 1)[1]
            for proj, part in zip(("q_proj", "k_proj", "v_proj"), split_wqkv(tensor, config), strict=True):
                state[f"{prefix}self_attn.{proj}.{kind}"] = part.contiguous()
        elif rest in _LAYER_NAMES:
            state[prefix + _LAYER_NAMES[rest]] = tensor
        else:
            raise UnsupportedModel(f"internlm2 checkpoint has an unexpected tensor {name!r}")
    return state


def from_llama_state(state: Mapping[str, torch.Tensor], config: LlamaConfig) -> dict[str, torch.Tensor]:
    top = {llama: original for original, llama in TOP_NAMES.items()}
    layer_names = {llama: original for original, llama in _LAYER_NAMES.items()}
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if name in top:
            out[top[name]] = tensor
            continue
        match = LAYER.fullmatch(name)
        if match is None:
            raise UnsupportedModel(f"cannot write {name!r} in the internlm2 format")
        layer, rest = match.groups()
        prefix = f"model.layers.{layer}."
        if rest in layer_names:
            out[prefix + layer_names[rest]] = tensor
        elif rest.startswith("self_attn.q_proj."):
            kind = rest.rsplit(".", 1)[1]
            q, k, v = (state[f"{prefix}self_attn.{proj}.{kind}"] for proj in ("q_proj", "k_proj", "v_proj"))
            out[f"{prefix}attention.wqkv.{kind}"] = fuse_wqkv(q, k, v, config)
        elif not rest.startswith(("self_attn.k_proj.", "self_attn.v_proj.")):
            raise UnsupportedModel(f"cannot write {name!r} in the internlm2 format")
    return out
