"""A decoder layer's elementwise steps on the CPU, one pass each (``csrc/fused_ops.cpp``).

Why puyu's own: eager torch runs transformers' RMSNorm as seven ops and the rotary embedding as seven
per tensor, each a dispatch and a pass over the step's activations; at a decode step of 32 tokens
their fixed costs add up to a tenth of the step. torch has no fused CPU op for either, and compiling
the layer (inductor) would recompile for every batch shape. The ops round where the modules round,
so a bf16 model gives its reference's values (checked in the tests against transformers' modules).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from services.inference_gateway.core.cpu_attention import CSRC
from shared.native_ops import NativeOp, load

LAYER_OPS = NativeOp(
    name="puyu_layer_ops",
    sources=(CSRC / "fused_ops.cpp",),
    cpu_flags=("avx2", "fma"),
    cflags=("-O3", "-fopenmp", "-mavx2", "-mfma"),
    what="norms and rotary embeddings run as transformers' modules",
)
# transformers' RMSNorm classes of the supported families: all ``weight * bf16(x * rsqrt(mean(x^2) + eps))``
RMS_NORMS = frozenset(
    {"LlamaRMSNorm", "MistralRMSNorm", "MixtralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm", "Qwen2MoeRMSNorm"}
)


def fusable_norm(norm: nn.Module, dtype: torch.dtype) -> bool:
    weight = getattr(norm, "weight", None)
    return (
        type(norm).__name__ in RMS_NORMS
        and isinstance(weight, torch.Tensor)
        and weight.dtype == dtype
        and weight.device.type == "cpu"
        and isinstance(getattr(norm, "variance_epsilon", None), float)
    )


def usable(model: Any) -> bool:
    """Whether every norm of the decoder layers can be fused here (builds the library at the first call)."""
    dtype = next(model.parameters()).dtype
    if dtype not in (torch.float32, torch.bfloat16):
        return False
    norms = [
        m for layer in model.model.layers for m in (layer.input_layernorm, layer.post_attention_layernorm)
    ]
    return all(fusable_norm(n, dtype) for n in norms) and load(LAYER_OPS)


def rms_norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out: torch.Tensor = torch.ops.puyu.rms_norm(x.contiguous(), norm.weight, norm.variance_epsilon)
    return out


def add_rms_norm(norm: nn.Module, x: torch.Tensor, delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x + delta, norm(x + delta))`` in one pass."""
    total, normed = torch.ops.puyu.add_rms_norm(
        x.contiguous(), delta.contiguous(), norm.weight, norm.variance_epsilon
    )
    return total, normed


def rotary(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' ``apply_rotary_pos_emb`` for ``q [T, Hq, D], k [T, Hk, D]`` and ``cos, sin [T, D]``."""
    q_out, k_out = torch.ops.puyu.rotary(q.contiguous(), k.contiguous(), cos.contiguous(), sin.contiguous())
    return q_out, k_out
