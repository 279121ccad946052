"""Quantised tensors of the InternLM families, mapped onto the Llama names puyu loads them as, and back.

InternLM3 uses Llama's tensor names: nothing to map. InternLM2 renames the modules and fuses q, k and
v into ``attention.wqkv`` with rows interleaved per key-value head (``hf_models.internlm2``). A
quantised ``wqkv`` (as LMDeploy's and AutoAWQ's InternLM2 checkpoints store it) is split by unpacking
its codes, scales and zeros, taking the same output rows as the floating-point split, and packing each
part again in the folder's layout; fusing on save is the reverse. The three parts read the same input,
so they share one group index (GPTQ's act-order included: the Hessian, hence the order, is the same).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from transformers import LlamaConfig

from shared.hf_models import internlm2
from shared.quantization.errors import UnsupportedCheckpoint
from shared.quantization.grid import QuantizedWeight
from shared.quantization.packing import PackedWeight, pack_awq, pack_gptq, unpack_awq, unpack_gptq
from shared.quantization.spec import Layout

PACKED_KINDS = ("qweight", "qzeros", "scales", "g_idx")
_QKV = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")


def unpack(packed: PackedWeight, layout: Layout, bits: int, group_size: int, v1: bool) -> QuantizedWeight:
    if layout == "awq-gemm":
        return unpack_awq(packed, bits, group_size)
    return unpack_gptq(packed, bits, group_size, v1=v1)


def to_llama_state(
    tensors: Iterable[tuple[str, torch.Tensor]],
    model_type: str,
    config: LlamaConfig,
    layout: Layout,
    bits: int,
    group_size: int,
    v1: bool,
) -> dict[str, torch.Tensor]:
    """A quantised checkpoint's tensors under the names of ``LlamaForCausalLM``."""
    if model_type != internlm2.MODEL_TYPE:
        return dict(tensors)
    state: dict[str, torch.Tensor] = {}
    fused: dict[str, dict[str, torch.Tensor]] = {}  # layer prefix -> wqkv's tensors
    for name, tensor in tensors:
        if internlm2.DERIVED.match(name):
            continue
        if name in internlm2.TOP_NAMES:
            state[internlm2.TOP_NAMES[name]] = tensor
            continue
        match = internlm2.LAYER.fullmatch(name)
        if match is None:
            raise UnsupportedCheckpoint(f"internlm2 checkpoint has an unexpected tensor {name!r}")
        layer, rest = match.groups()
        prefix = f"model.layers.{layer}."
        module, _, kind = rest.rpartition(".")
        if module == "attention.wqkv":
            fused.setdefault(prefix, {})[kind] = tensor
        elif module in internlm2.LAYER_MODULES:
            state[f"{prefix}{internlm2.LAYER_MODULES[module]}.{kind}"] = tensor
        else:
            raise UnsupportedCheckpoint(f"internlm2 checkpoint has an unexpected tensor {name!r}")
    for prefix, parts in fused.items():
        state.update(_split(prefix, parts, config, layout, bits, group_size, v1))
    return state


def _split(
    prefix: str,
    parts: dict[str, torch.Tensor],
    config: LlamaConfig,
    layout: Layout,
    bits: int,
    group_size: int,
    v1: bool,
) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    if "bias" in parts:
        for module, bias in zip(_QKV, internlm2.split_wqkv(parts["bias"], config), strict=True):
            out[f"{prefix}{module}.bias"] = bias.contiguous()
    if "weight" in parts:  # a folder that left wqkv in floating point
        for module, weight in zip(_QKV, internlm2.split_wqkv(parts["weight"], config), strict=True):
            out[f"{prefix}{module}.weight"] = weight.contiguous()
        return out
    missing = [kind for kind in ("qweight", "qzeros", "scales") if kind not in parts]
    if missing:
        raise UnsupportedCheckpoint(f"{prefix}attention.wqkv lacks {', '.join(missing)}")
    packed = PackedWeight(parts["qweight"], parts["qzeros"], parts["scales"], parts.get("g_idx"))
    if layout == "gptq" and packed.g_idx is None:
        in_features = packed.qweight.shape[0] * 32 // bits
        size = in_features if group_size == -1 else group_size
        packed.g_idx = (torch.arange(in_features) // size).to(torch.int32)
    whole = unpack(packed, layout, bits, group_size, v1)
    codes = internlm2.split_wqkv(whole.codes, config)
    scales = internlm2.split_wqkv(whole.scales.T, config)
    zeros = internlm2.split_wqkv(whole.zeros.T, config)
    for module, c, s, z in zip(_QKV, codes, scales, zeros, strict=True):
        part = QuantizedWeight(
            c.contiguous(), s.T.contiguous(), z.T.contiguous(), whole.g_idx, bits, group_size
        )
        repacked = _pack_as_read(part, layout, v1)
        out[f"{prefix}{module}.qweight"] = repacked.qweight
        out[f"{prefix}{module}.qzeros"] = repacked.qzeros
        out[f"{prefix}{module}.scales"] = repacked.scales
        if repacked.g_idx is not None:
            out[f"{prefix}{module}.g_idx"] = repacked.g_idx
    return out


def _pack_as_read(weight: QuantizedWeight, layout: Layout, v1: bool) -> PackedWeight:
    """Packed so that ``QuantLinear``, reading with the folder's ``v1``, gets ``weight`` back."""
    if layout == "awq-gemm":
        return pack_awq(weight)
    if v1 and int(weight.zeros.min()) < 1:
        raise UnsupportedCheckpoint(
            "a GPTQ v1 wqkv with a zero point of 0 cannot be repacked without a borrow; save it as gptq_v2"
        )
    return pack_gptq(weight, v1=v1)


def from_llama_state(
    state: Mapping[str, torch.Tensor],
    model_type: str,
    config: LlamaConfig,
    layout: Layout,
    bits: int,
    group_size: int,
    v1: bool,
) -> dict[str, torch.Tensor]:
    """``LlamaForCausalLM``'s quantised tensors under the family's own names (wqkv fused again)."""
    if model_type != internlm2.MODEL_TYPE:
        return dict(state)
    top = {llama: original for original, llama in internlm2.TOP_NAMES.items()}
    modules = {llama: original for original, llama in internlm2.LAYER_MODULES.items()}
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if name in top:
            out[top[name]] = tensor
            continue
        match = internlm2.LAYER.fullmatch(name)
        if match is None:
            raise UnsupportedCheckpoint(f"cannot write {name!r} in the internlm2 format")
        layer, rest = match.groups()
        prefix = f"model.layers.{layer}."
        module, _, kind = rest.rpartition(".")
        if module in modules:
            out[f"{prefix}{modules[module]}.{kind}"] = tensor
        elif module == _QKV[0] and kind in ("qweight", "weight"):
            out.update(_fuse(prefix, state, config, layout, bits, group_size, v1))
        elif module not in _QKV:
            raise UnsupportedCheckpoint(f"cannot write {name!r} in the internlm2 format")
    return out


def _fuse3(parts: list[torch.Tensor], config: LlamaConfig) -> torch.Tensor:
    q, k, v = parts
    return internlm2.fuse_wqkv(q, k, v, config)


def _fuse(
    prefix: str,
    state: Mapping[str, torch.Tensor],
    config: LlamaConfig,
    layout: Layout,
    bits: int,
    group_size: int,
    v1: bool,
) -> dict[str, torch.Tensor]:
    names = [f"{prefix}{module}" for module in _QKV]
    out: dict[str, torch.Tensor] = {}
    if f"{names[0]}.bias" in state:
        biases = [state[f"{name}.bias"] for name in names]
        out[f"{prefix}attention.wqkv.bias"] = _fuse3(biases, config)
    if f"{names[0]}.weight" in state:
        weights = [state[f"{name}.weight"] for name in names]
        out[f"{prefix}attention.wqkv.weight"] = _fuse3(weights, config)
        return out
    parts = [
        unpack(
            PackedWeight(
                state[f"{name}.qweight"],
                state[f"{name}.qzeros"],
                state[f"{name}.scales"],
                state.get(f"{name}.g_idx"),
            ),
            layout,
            bits,
            group_size,
            v1,
        )
        for name in names
    ]
    if any(not torch.equal(part.g_idx, parts[0].g_idx) for part in parts):
        raise UnsupportedCheckpoint(
            f"{prefix}q/k/v have different group orders: they cannot be fused into wqkv"
        )
    fused = QuantizedWeight(
        _fuse3([p.codes for p in parts], config),
        _fuse3([p.scales.T for p in parts], config).T.contiguous(),
        _fuse3([p.zeros.T for p in parts], config).T.contiguous(),
        parts[0].g_idx,
        bits,
        group_size,
    )
    packed = _pack_as_read(fused, layout, v1)
    out[f"{prefix}attention.wqkv.qweight"] = packed.qweight
    out[f"{prefix}attention.wqkv.qzeros"] = packed.qzeros
    out[f"{prefix}attention.wqkv.scales"] = packed.scales
    if packed.g_idx is not None:
        out[f"{prefix}attention.wqkv.g_idx"] = packed.g_idx
    return out
