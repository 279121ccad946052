"""Paged-attention decode kernel in Triton (CUDA): one program per (sequence, query head), online softmax
over the sequence's blocks, read straight from the block table (no gather copy of the context).

Imported only when Triton is installed; ``attention.paged_decode_torch`` is the exact fallback and
``tests/unit/inference_gateway/test_gateway_attention.py`` checks both against the reference.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _paged_decode_kernel(
    Q,
    K,
    V,
    BT,
    CL,
    Out,
    scale,
    stride_qb,
    stride_qh,
    stride_ks,
    stride_kh,
    stride_bt,
    stride_ob,
    stride_oh,
    GROUPS: tl.constexpr,
    BLOCK: tl.constexpr,
    D: tl.constexpr,
    DP: tl.constexpr,
):
    b = tl.program_id(0)
    h = tl.program_id(1)
    kvh = h // GROUPS
    ctx = tl.load(CL + b)
    d = tl.arange(0, DP)
    dmask = d < D
    q = tl.load(Q + b * stride_qb + h * stride_qh + d, mask=dmask, other=0.0).to(tl.float32)
    offs = tl.arange(0, BLOCK)
    m = tl.full((), float("-inf"), tl.float32)
    denom = tl.zeros((), tl.float32)
    acc = tl.zeros((DP,), tl.float32)
    for i in range(0, tl.cdiv(ctx, BLOCK)):
        bid = tl.load(BT + b * stride_bt + i)
        pos = i * BLOCK + offs
        valid = pos < ctx
        ptr = (bid * BLOCK + offs)[:, None] * stride_ks + kvh * stride_kh + d[None, :]
        lmask = valid[:, None] & dmask[None, :]
        k = tl.load(K + ptr, mask=lmask, other=0.0).to(tl.float32)
        s = tl.sum(k * q[None, :], 1) * scale
        s = tl.where(valid, s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, 0))
        p = tl.exp(s - m_new)
        alpha = tl.exp(m - m_new)
        v = tl.load(V + ptr, mask=lmask, other=0.0).to(tl.float32)
        denom = denom * alpha + tl.sum(p, 0)
        acc = acc * alpha + tl.sum(p[:, None] * v, 0)
        m = m_new
    out = acc / denom
    tl.store(Out + b * stride_ob + h * stride_oh + d, out.to(Out.dtype.element_ty), mask=dmask)


def paged_decode_triton(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    block_size: int,
    scale: float,
) -> torch.Tensor:
    """Same contract as ``attention.paged_decode_torch``; ``block_size`` must be a power of two."""
    b, hq, d = q.shape
    q = q.contiguous()
    out = torch.empty_like(q)
    bt = block_tables.to(torch.int32).contiguous()
    cl = context_lens.to(torch.int32).contiguous()
    _paged_decode_kernel[(b, hq)](
        q,
        k_cache,
        v_cache,
        bt,
        cl,
        out,
        scale,
        q.stride(0),
        q.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        bt.stride(0),
        out.stride(0),
        out.stride(1),
        GROUPS=hq // k_cache.shape[1],
        BLOCK=block_size,
        D=d,
        DP=triton.next_power_of_2(d),
    )
    return out
