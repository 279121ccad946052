"""InternLM3 as transformers' Llama, and back.

InternLM3's modeling file is Llama's with its own names for two bias switches: ``qkv_bias`` on the
query/key/value projections, ``bias`` on the output projection and the MLP. Its tensor names are
Llama's, so the weights load unchanged. Llama has one switch for all four attention projections
(``attention_bias``) and one for the MLP (``mlp_bias``): the released configuration (both off) and
any with ``qkv_bias == bias`` map exactly; a folder with them different is refused (transformers'
own InternLM3 support refuses it too). ``head_dim`` and ``rope_scaling`` (default, linear, dynamic,
as the transformers release the file was written for computed them) carry over.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from transformers import LlamaConfig

from shared.hf_models.formats import UnsupportedModel
from shared.hf_models.rope import from_rope_parameters, to_rope_parameters

MODEL_TYPE = "internlm3"
_ROPE_TYPES = frozenset({"linear", "dynamic"})

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
    "attention_dropout",
    "head_dim",
)


def to_llama_config(source: Mapping[str, Any]) -> LlamaConfig:
    qkv_bias, bias = bool(source.get("qkv_bias", False)), bool(source.get("bias", False))
    if qkv_bias != bias:
        raise UnsupportedModel(
            f"internlm3 with qkv_bias={qkv_bias} and bias={bias} is not supported: "
            "Llama has one bias switch for the query, key, value and output projections"
        )
    fields: dict[str, Any] = {
        # The defaults of InternLM3's own configuration class, for fields a config.json leaves out.
        "vocab_size": 128512,
        "hidden_size": 4096,
        "intermediate_size": 11008,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "hidden_act": "silu",
        "max_position_embeddings": 32768,
        "initializer_range": 0.02,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": False,
        "attention_dropout": 0.0,
    }
    fields.update({k: source[k] for k in _SHARED_FIELDS if source.get(k) is not None})
    fields.setdefault("num_key_value_heads", fields["num_attention_heads"])
    fields.setdefault("head_dim", fields["hidden_size"] // fields["num_attention_heads"])
    return LlamaConfig(
        **fields,
        attention_bias=bias,
        mlp_bias=bias,
        rope_parameters=to_rope_parameters(
            source.get("rope_theta", 10000.0), source.get("rope_scaling"), _ROPE_TYPES, MODEL_TYPE
        ),
        architectures=["LlamaForCausalLM"],
    )


def from_llama_config(config: LlamaConfig, source: Mapping[str, Any]) -> dict[str, Any]:
    """The InternLM3 config.json for ``config``: the source's, with the structural fields of ``config``."""
    out = dict(source)
    out.update({k: getattr(config, k) for k in _SHARED_FIELDS})
    out["qkv_bias"] = out["bias"] = bool(config.attention_bias)
    params = dict(config.rope_parameters or {})
    source_params = to_rope_parameters(
        source.get("rope_theta", 10000.0), source.get("rope_scaling"), _ROPE_TYPES, MODEL_TYPE
    )
    if params != source_params:
        out["rope_theta"], out["rope_scaling"] = from_rope_parameters(params, "rope_type")
    out["model_type"] = MODEL_TYPE
    return out


def to_llama_state(
    tensors: Iterable[tuple[str, torch.Tensor]], config: LlamaConfig
) -> dict[str, torch.Tensor]:
    return {name: tensor for name, tensor in tensors if not name.endswith("rotary_emb.inv_freq")}


def from_llama_state(state: Mapping[str, torch.Tensor], config: LlamaConfig) -> dict[str, torch.Tensor]:
    return dict(state)
