"""Causal self-attention for training, by device, precision and whether it is being compiled.

- CUDA, and long sequences: SDPA (flash).
- CPU under ``torch.compile``, short sequences (``use_short_attention``): scores, masked softmax and
  the weighted sum written out as two batched matmuls with the softmax between them, which Inductor
  fuses (in fp32 inside its kernels, also for bf16). The heads that share a key/value head are stacked
  as rows of one matmul, so keys and values are never repeated for grouped-query attention. For
  16 x 128 tokens, 6 heads of 32 (GQA 2), forward and backward per layer: bf16 3.8 ms and fp32 6.8 ms
  against 8.2-10 ms for fp32 flash. The scores are materialised, hence the size limits.
- CPU bf16 autocast otherwise (eager): SDPA in fp32. The CPU flash kernel's bf16 backward is ~3x
  slower than its fp32 one, while the projections around attention gain 2x from bf16.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Beyond these the materialised [B, H, T, T] scores (kept for the backward, per layer) cost more
# time or memory than flash attention saves: 2**23 scores are 32 MB per layer in fp32.
SHORT_ATTENTION_MAX_LEN = 256
SHORT_ATTENTION_MAX_SCORES = 1 << 23


def use_short_attention(q: torch.Tensor) -> bool:
    b, h, t, _ = q.shape
    return t <= SHORT_ATTENTION_MAX_LEN and b * h * t * t <= SHORT_ATTENTION_MAX_SCORES


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, gqa: bool
) -> torch.Tensor:
    """q [B, H, T, D], k/v [B, KV, T, D]; ``mask`` [B, 1, T, T] (True: attend) or None for causal."""
    if q.device.type != "cpu":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, enable_gqa=gqa)
    autocast = torch.is_autocast_enabled("cpu")
    if torch.compiler.is_compiling() and use_short_attention(q):
        dtype = torch.get_autocast_dtype("cpu") if autocast else v.dtype
        return short_attention(q.to(dtype), k.to(dtype), v.to(dtype), mask)
    if autocast:
        dtype = torch.get_autocast_dtype("cpu")
        with torch.autocast("cpu", enabled=False):
            y = F.scaled_dot_product_attention(
                q.float(), k.float(), v.float(), attn_mask=mask, is_causal=mask is None, enable_gqa=gqa
            )
        return y.to(dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, enable_gqa=gqa)


def short_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    """The same maths as causal SDPA (with ``mask`` when given), as matmuls around a softmax."""
    b, h, t, d = q.shape
    kv = k.shape[1]
    group = h // kv
    q = (q * d**-0.5).reshape(b, kv, group * t, d)  # a group's heads as rows: no repeated k/v
    scores = torch.matmul(q, k.transpose(-1, -2)).view(b, kv, group, t, t)
    if mask is None:
        bias = torch.full((t, t), float("-inf"), device=q.device, dtype=q.dtype).triu(1)
    else:  # every row attends at least to its own token, so no row is all -inf
        zero = torch.zeros((), device=q.device, dtype=q.dtype)
        bias = torch.where(mask, zero, float("-inf")).unsqueeze(1)  # [B, 1, 1, T, T]
    probs = torch.softmax(scores + bias, dim=-1).view(b, kv, group * t, t)
    return torch.matmul(probs, v).view(b, h, t, d)
