"""Everything a request is checked against before any compute: the family, each decoder layer's
modules, the group size against every dimension, and the calibration set."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from shared.quantization.errors import (
    CalibrationTooSmall,
    GroupSizeMismatch,
    InvalidCalibration,
    UnsupportedArchitecture,
    UnsupportedLayer,
)
from shared.quantization.spec import QuantSpec

# Dense Llama-family decoders whose layers transformers builds with the same module names.
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
# Folders quantised and read quantised: those, and the InternLM families ``shared.hf_models`` loads
# as Llama (their output keeps the source's layout).
SUPPORTED_SOURCE_TYPES = (*SUPPORTED_MODEL_TYPES, "internlm2", "internlm3")
ATTENTION = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
MLP = ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
PROJECTIONS = ATTENTION + MLP
NORMS = ("input_layernorm", "post_attention_layernorm")


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers of a supported causal LM; any other family is refused naming what it is."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedArchitecture(
            f"{type(model).__name__} (model_type {model_type!r}) cannot be quantised; "
            f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    layers = getattr(getattr(model, "model", None), "layers", None)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        raise UnsupportedArchitecture(f"{type(model).__name__} has no model.layers to quantise")
    return layers


def check_model(model: nn.Module, spec: QuantSpec) -> nn.ModuleList:
    """Refuse any layer the method cannot handle, and any dimension the group size or layout cannot."""
    layers = decoder_layers(model)
    for index, layer in enumerate(layers):
        where = f"model.layers.{index}"
        for name in NORMS:
            norm = getattr(layer, name, None)
            if norm is None or getattr(norm, "weight", None) is None:
                raise UnsupportedLayer(f"{where}.{name}: missing or without a weight to fold scales into")
        for name, module in layer.named_modules():
            if isinstance(module, nn.Linear) and name not in PROJECTIONS:
                raise UnsupportedLayer(
                    f"{where}.{name}: a linear layer outside attention and MLP projections"
                )
        for name in PROJECTIONS:
            try:
                module = layer.get_submodule(name)
            except AttributeError:
                raise UnsupportedLayer(
                    f"{where}.{name}: missing (a mixture-of-experts or other MLP?)"
                ) from None
            if type(module) is not nn.Linear:
                raise UnsupportedLayer(
                    f"{where}.{name} is a {type(module).__name__}; only plain torch.nn.Linear layers are quantised"
                )
            check_shape(f"{where}.{name}", module.in_features, module.out_features, spec)
    return layers


def check_shape(where: str, in_features: int, out_features: int, spec: QuantSpec) -> None:
    """A projection of [out, in] the group size divides and the layout packs."""
    per_word = 32 // spec.bits
    if spec.group_size != -1 and in_features % spec.group_size:
        raise GroupSizeMismatch(
            f"group size {spec.group_size} does not divide {where}'s input dimension {in_features}"
        )
    if out_features % per_word:
        raise GroupSizeMismatch(
            f"{where}'s output dimension {out_features} is not a multiple of {per_word} "
            f"({spec.bits}-bit codes are packed {per_word} to an int32)"
        )
    if spec.layout == "gptq" and in_features % per_word:
        raise GroupSizeMismatch(
            f"{where}'s input dimension {in_features} is not a multiple of {per_word} (GPTQ packs inputs)"
        )


def check_config(config: Mapping[str, Any], spec: QuantSpec) -> None:
    """The group size and packing against the projections a folder's ``config.json`` describes, so
    that a mismatch is refused before any weight is read (``check_model`` checks the loaded layers)."""
    try:
        hidden = int(config["hidden_size"])
        heads = int(config["num_attention_heads"])
        kv_heads = int(config.get("num_key_value_heads") or heads)
        head_dim = int(config.get("head_dim") or hidden // heads)
        intermediate = int(config["intermediate_size"])
    except (KeyError, TypeError, ValueError) as exc:
        raise UnsupportedArchitecture(f"config.json lacks a dense decoder's dimensions: {exc}") from None
    shapes = {
        "self_attn.q_proj": (hidden, heads * head_dim),
        "self_attn.k_proj": (hidden, kv_heads * head_dim),
        "self_attn.o_proj": (heads * head_dim, hidden),
        "mlp.gate_proj": (hidden, intermediate),
        "mlp.down_proj": (intermediate, hidden),
    }
    for name, (in_features, out_features) in shapes.items():
        check_shape(f"model.layers.*.{name}", in_features, out_features, spec)


def check_calibration(sequences: Sequence[Sequence[int]], spec: QuantSpec, vocab_size: int) -> None:
    """AWQ and GPTQ need at least ``spec.min_calibration_tokens`` tokens, each id in the vocabulary."""
    if not spec.needs_calibration:
        return
    total = sum(len(sequence) for sequence in sequences)
    if total < spec.min_calibration_tokens:
        raise CalibrationTooSmall(
            f"{spec.method} needs at least {spec.min_calibration_tokens} calibration tokens; "
            f"got {total} in {len(sequences)} sequences"
        )
    for number, sequence in enumerate(sequences):
        if len(sequence) and (min(sequence) < 0 or max(sequence) >= vocab_size):
            raise InvalidCalibration(
                f"calibration sequence {number} holds token ids outside the vocabulary of {vocab_size}"
            )


def projection(layer: nn.Module, name: str) -> nn.Linear:
    """One of a checked layer's ``PROJECTIONS``."""
    module = layer.get_submodule(name)
    assert isinstance(module, nn.Linear)  # check_model refused anything else
    return module
