"""Fused ops with one dispatch point: Triton kernels on CUDA, exact torch references elsewhere.

The references are the definitions (they match ``transformers``' Llama modules bit for bit on the
CPU); the Triton kernels in ``kernels_triton`` are checked against them on a CUDA device.
``PUYU_TRAINER_KERNELS=torch`` forces the references everywhere (for debugging a kernel).
"""

from __future__ import annotations

import functools
import importlib.util
import os

import torch
import torch.nn.functional as F


@functools.cache
def triton_available() -> bool:
    if os.environ.get("PUYU_TRAINER_KERNELS", "auto") == "torch":
        return False
    return torch.cuda.is_available() and importlib.util.find_spec("triton") is not None


def _use_triton(x: torch.Tensor) -> bool:
    return x.is_cuda and triton_available()


# ----------------------------------------------------------------------------------- references


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """LlamaRMSNorm: normalise in fp32, cast back, then scale."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rotary_reference(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE in the Llama (half-rotation) layout; q, k: [B, H, T, D], cos/sin: [B, T, D]."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


def cross_entropy_reference(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100
) -> torch.Tensor:
    """Mean token cross-entropy in fp32 over labels != ignore_index; logits [N, V], labels [N]."""
    return F.cross_entropy(logits.float(), labels, ignore_index=ignore_index)


# ------------------------------------------------------------------------------------- dispatch


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    if _use_triton(x):
        from services.trainer.core import kernels_triton

        return kernels_triton.rms_norm(x, weight, eps)
    return rms_norm_reference(x, weight, eps)


def rotary(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    d = q.shape[-1]
    if _use_triton(q) and d >= 4 and d & (d - 1) == 0:  # the kernel's half-rows are power-of-two blocks
        from services.trainer.core import kernels_triton

        return kernels_triton.rotary(q, cos, sin), kernels_triton.rotary(k, cos, sin)
    return rotary_reference(q, k, cos, sin)


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    if _use_triton(logits):
        from services.trainer.core import kernels_triton

        return kernels_triton.cross_entropy(logits, labels, ignore_index)
    return cross_entropy_reference(logits, labels, ignore_index)
