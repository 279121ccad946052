"""Attention over the paged KV cache: the decode step (one query per sequence) and prefill chunks.

``paged_decode`` runs the Triton kernel (``triton_attention``) on CUDA when Triton is installed and
the exact torch path everywhere else; ``reference_attention`` is the plain-math definition both are
tested against.

Every function reads an 8-bit cache (int8, fp8) when given its per (token, head) scales
``k_scale, v_scale`` (shaped as the cache less ``head_dim``): the torch paths dequantise what they
read into the query's dtype, the Triton kernel folds the scales into its scores and probabilities.
"""

from __future__ import annotations

import functools
import logging

import torch
import torch.nn.functional as F

from services.inference_gateway.core.kv_cache import dequantize

log = logging.getLogger(__name__)


def _read(x: torch.Tensor, scale: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """Cached keys or values as attention computes with them: dequantised when ``scale`` is given."""
    return x if scale is None else dequantize(x, scale, dtype)


def block_slots(block_tables: torch.Tensor, block_size: int) -> torch.Tensor:
    """Slot index of every position a block table covers: ``[B, M] -> [B, M * block_size]``."""
    offsets = torch.arange(block_size, device=block_tables.device)
    return (block_tables[:, :, None] * block_size + offsets).flatten(1)


def paged_decode_torch(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    block_size: int,
    scale: float,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """``q [B, Hq, D]`` attends to the first ``context_lens[b]`` cached tokens of its sequence: ``[B, Hq, D]``."""
    slots = block_slots(block_tables, block_size)  # [B, L]
    # the gather is the one copy the paged layout costs on this path (the Triton kernel reads in place)
    k = _read(k_cache[slots], None if k_scale is None else k_scale[slots], q.dtype).transpose(1, 2)
    v = _read(v_cache[slots], None if v_scale is None else v_scale[slots], q.dtype).transpose(1, 2)
    live = torch.arange(slots.shape[1], device=q.device)[None] < context_lens[:, None]
    out = F.scaled_dot_product_attention(
        q[:, :, None], k, v, attn_mask=live[:, None, None], scale=scale, enable_gqa=k.shape[1] != q.shape[1]
    )
    return out[:, :, 0]


def prefill_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    context_slots: torch.Tensor,
    start: int,
    scale: float,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """A chunk of one sequence, ``q [C, Hq, D]`` at positions ``start..start+C``, over its cached context.

    ``context_slots [start + C]`` are the slots of every position up to the chunk's end (the chunk's own
    keys are already written): causal attention over the cached prefix and the chunk itself.
    """
    c = q.shape[0]
    ks = None if k_scale is None else k_scale[context_slots]
    vs = None if v_scale is None else v_scale[context_slots]
    k = _read(k_cache[context_slots], ks, q.dtype).transpose(0, 1)[None]  # [1, Hkv, T, D]
    v = _read(v_cache[context_slots], vs, q.dtype).transpose(0, 1)[None]
    pos_q = torch.arange(start, start + c, device=q.device)[:, None]
    mask = torch.arange(context_slots.shape[0], device=q.device)[None] <= pos_q  # [C, T]
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1)[None], k, v, attn_mask=mask, scale=scale, enable_gqa=k.shape[1] != q.shape[1]
    )
    return out[0].transpose(0, 1)  # [C, Hq, D]


def row_decode(
    q: torch.Tensor,
    k_rows: torch.Tensor,
    v_rows: torch.Tensor,
    bias: torch.Tensor,
    scale: float,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """``q [R, Hq, D]``, one query per row, over views ``k_rows, v_rows [R, Hkv, L, D]`` of the row cache.

    ``bias [R, 1, 1, L]`` is 0 on each row's context and -inf past it (a row with no decode in this
    step keeps one live position, so its throw-away output stays finite). Two batched matmuls over
    (row, kv head) with the query heads of a group stacked: the views are read in place, and for one
    query per row this beats SDPA's CPU flash kernel (which tiles over query blocks) by about a third.
    An 8-bit cache is dequantised first (one transient copy of the layer's views, the price of its
    smaller rows: there is no int8 x float matmul to read them in place).
    """
    k_rows, v_rows = _read(k_rows, k_scale, q.dtype), _read(v_rows, v_scale, q.dtype)
    r, hq, d = q.shape
    hkv, length = k_rows.shape[1], k_rows.shape[2]
    g = hq // hkv
    # rows and kv heads merge into one batch dim of the views without a copy (row stride = hkv * head stride)
    k = k_rows.reshape(r * hkv, length, d)
    v = v_rows.reshape(r * hkv, length, d)
    scores = torch.bmm((q * scale).view(r * hkv, g, d), k.transpose(1, 2)).view(r, hkv, g, length)
    probs = (scores + bias).softmax(-1)
    return torch.bmm(probs.view(r * hkv, g, length), v).view(r, hq, d)


def row_prefill(
    q: torch.Tensor,
    k_row: torch.Tensor,
    v_row: torch.Tensor,
    mask: torch.Tensor | None,
    scale: float,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """A chunk ``q [C, Hq, D]`` of one sequence over its row ``k_row, v_row [Hkv, T, D]`` (T: the chunk's end).

    ``mask [C, T]`` is the causal mask of a chunk after a cached prefix; None for a chunk from position 0.
    """
    k_row, v_row = _read(k_row, k_scale, q.dtype), _read(v_row, v_scale, q.dtype)
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1)[None],
        k_row[None],
        v_row[None],
        attn_mask=mask,
        is_causal=mask is None,
        scale=scale,
        enable_gqa=k_row.shape[0] != q.shape[1],
    )
    return out[0].transpose(0, 1)


def causal_mask(start: int, length: int, device: torch.device) -> torch.Tensor:
    """``[length, start + length]``: query ``i`` (at position ``start + i``) sees positions up to its own."""
    pos_q = torch.arange(start, start + length, device=device)[:, None]
    return torch.arange(start + length, device=device)[None] <= pos_q


def reference_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, causal_offset: int | None = None
) -> torch.Tensor:
    """Plain attention of ``q [C, Hq, D]`` over contiguous ``k, v [T, Hkv, D]`` (the definition tests check against)."""
    groups = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(groups, dim=1)
    v = v.repeat_interleave(groups, dim=1)
    scores = torch.einsum("chd,thd->hct", q.double(), k.double()) * scale
    if causal_offset is not None:
        allowed = torch.arange(k.shape[0])[None] <= torch.arange(q.shape[0])[:, None] + causal_offset
        scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.einsum("hct,thd->chd", scores.softmax(-1), v.double()).to(q.dtype)


@functools.cache
def _triton_decode():  # type: ignore[no-untyped-def]
    try:
        from services.inference_gateway.core.triton_attention import paged_decode_triton
    except ImportError:  # no triton: the torch path serves CUDA too
        log.info("triton is not installed: paged decode attention runs on the torch path")
        return None
    return paged_decode_triton


def _triton_reads(q: torch.Tensor, k_cache: torch.Tensor) -> bool:
    """Triton's e4m3 (``float8e4nv``) needs compute capability 8.9; older devices take the torch path."""
    if k_cache.dtype != torch.uint8:  # uint8: fp8 e4m3 bits (kv_cache.FP8)
        return True
    return torch.cuda.get_device_capability(q.device) >= (8, 9)


def paged_decode(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    block_size: int,
    scale: float,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    args = (q, k_cache, v_cache, block_tables, context_lens, block_size, scale, k_scale, v_scale)
    if q.is_cuda and (kernel := _triton_decode()) is not None and _triton_reads(q, k_cache):
        out: torch.Tensor = kernel(*args)
        return out
    return paged_decode_torch(*args)
