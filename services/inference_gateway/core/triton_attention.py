"""Paged-attention decode kernel in Triton (CUDA): one program per (sequence, query head), online softmax
over the sequence's blocks, read straight from the block table (no gather copy of the context).
An 8-bit cache (int8, fp8 e4m3) is read as stored with its per (token, head) scales, which fold
into the scores (keys) and the probabilities (values): no dequantised copy of a block is made.

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
    KS,
    VS,
    BT,
    CL,
    Out,
    scale,
    stride_qb,
    stride_qh,
    stride_ks,
    stride_kh,
    stride_ss,
    stride_sh,
    stride_bt,
    stride_ob,
    stride_oh,
    GROUPS: tl.constexpr,
    BLOCK: tl.constexpr,
    D: tl.constexpr,
    DP: tl.constexpr,
    QUANT: tl.constexpr,
    FP8: tl.constexpr,
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
        slot = bid * BLOCK + offs
        ptr = slot[:, None] * stride_ks + kvh * stride_kh + d[None, :]
        lmask = valid[:, None] & dmask[None, :]
        k = tl.load(K + ptr, mask=lmask, other=0)
        if FP8:  # the cache holds e4m3 bits as uint8
            k = k.to(tl.float8e4nv, bitcast=True)
        k = k.to(tl.float32)
        s = tl.sum(k * q[None, :], 1) * scale
        if QUANT:  # q . (k_int * ks) = (q . k_int) * ks
            s = s * tl.load(KS + slot * stride_ss + kvh * stride_sh, mask=valid, other=0).to(tl.float32)
        s = tl.where(valid, s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, 0))
        p = tl.exp(s - m_new)
        alpha = tl.exp(m - m_new)
        v = tl.load(V + ptr, mask=lmask, other=0)
        if FP8:
            v = v.to(tl.float8e4nv, bitcast=True)
        v = v.to(tl.float32)
        denom = denom * alpha + tl.sum(p, 0)
        pv = p
        if QUANT:  # sum_t p_t * (v_int_t * vs_t) = sum_t (p_t * vs_t) * v_int_t
            pv = p * tl.load(VS + slot * stride_ss + kvh * stride_sh, mask=valid, other=0).to(tl.float32)
        acc = acc * alpha + tl.sum(pv[:, None] * v, 0)
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
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Same contract as ``attention.paged_decode_torch``; ``block_size`` must be a power of two.

    ``k_scale, v_scale [slots, kv_heads]``: the scales of an 8-bit cache (both or neither).
    """
    b, hq, d = q.shape
    if k_cache.stride(-1) != 1 or k_cache.stride() != v_cache.stride():
        raise ValueError("the kernel reads keys and values with the same strides, head_dim contiguous")
    if k_scale is not None and v_scale is not None:
        if k_scale.stride() != v_scale.stride() or k_scale.shape != k_cache.shape[:2]:
            raise ValueError("key and value scales must be [slots, kv_heads] with the same strides")
        quant, ks, vs = True, k_scale, v_scale
    elif k_scale is None and v_scale is None:
        quant, ks, vs = False, k_cache, v_cache  # never read without QUANT
    else:
        raise ValueError("an 8-bit cache needs both its key and its value scales")
    q = q.contiguous()
    out = torch.empty_like(q)
    bt = block_tables.to(torch.int32).contiguous()
    cl = context_lens.to(torch.int32).contiguous()
    _paged_decode_kernel[(b, hq)](
        q,
        k_cache,
        v_cache,
        ks,
        vs,
        bt,
        cl,
        out,
        scale,
        q.stride(0),
        q.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        ks.stride(0),
        ks.stride(1),
        bt.stride(0),
        out.stride(0),
        out.stride(1),
        GROUPS=hq // k_cache.shape[1],
        BLOCK=block_size,
        D=d,
        DP=triton.next_power_of_2(d),
        QUANT=quant,
        FP8=k_cache.dtype == torch.uint8,  # fp8 e4m3 kept as its bits (kv_cache.FP8)
    )
    return out
