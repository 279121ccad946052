"""Weight-only int4/int8 matmul on CUDA in Triton: ``x @ W.T`` with ``W`` dequantised tile by tile.

One kernel for both bit widths and both checkpoint layouts: a layer is prepared once (``prepare``)
into GPTQ's packing along the input dimension (``32 // bits`` codes per int32, lowest bits first),
with fp scales and ``zero * scale`` per (group, output) and input channels permuted into group order
(act-order). Each program computes a ``BLOCK_M x BLOCK_N`` tile of the output: per ``BLOCK_K`` slice
of the input it loads the packed words, shifts out the codes, dequantises ``q * s - z * s`` in
registers and accumulates ``tl.dot`` in fp32, so the fp16 weight never exists in memory. ``BLOCK_K``
divides the group size, so a slice reads one scale row. Hand-written because no maintained Triton
kernel library installs here for both layouts at 4 and 8 bits (gptqmodel's Triton kernel is 4-bit
GPTQ only, and pulls a CUDA build).

Imported only where Triton is installed; on the CPU it runs under ``TRITON_INTERPRET=1`` (the tests).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from shared.quantization.grid import QuantizedWeight
from shared.quantization.kernels import group_order


@dataclass
class TritonWeight:
    bits: int
    group_size: int
    perm: torch.Tensor | None  # input channels in group order; None when already in order
    qweight: torch.Tensor  # int32 [in * bits // 32, out]
    scales: torch.Tensor  # [groups, out], the activation dtype
    zero_scales: torch.Tensor  # zero * scale [groups, out], the activation dtype
    in_features: int
    out_features: int


def prepare(weight: QuantizedWeight, dtype: torch.dtype, device: torch.device) -> TritonWeight | None:
    """The kernel's form of ``weight``; None where its grid has groups the kernel cannot tile."""
    order = group_order(weight)
    if order is None:
        return None
    size, perm = order
    if size % 16:  # tl.dot tiles of at least 16 inputs, each inside one group
        return None
    codes = weight.codes if perm is None else weight.codes[:, perm]
    per_word = 32 // weight.bits
    rows = codes.T.contiguous().to(torch.int64).reshape(weight.in_features // per_word, per_word, -1)
    shifts = (torch.arange(per_word, dtype=torch.int64) * weight.bits).view(1, -1, 1)
    words = (rows << shifts).sum(dim=1) & 0xFFFFFFFF
    qweight = torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)
    n_groups = weight.in_features // size
    scales = weight.scales[:n_groups].float()
    zero_scales = weight.zeros[:n_groups].float() * scales
    return TritonWeight(
        bits=weight.bits,
        group_size=size,
        perm=None if perm is None else perm.to(device),
        qweight=qweight.to(device),
        scales=scales.to(dtype).to(device),
        zero_scales=zero_scales.to(dtype).to(device),
        in_features=weight.in_features,
        out_features=weight.out_features,
    )


@triton.jit
def _dequant_matmul_kernel(
    X,
    QW,
    S,
    ZS,
    Out,
    M,
    N,
    K,
    stride_xm,
    stride_qk,
    stride_sg,
    stride_om,
    GROUP: tl.constexpr,
    BITS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    per_word: tl.constexpr = 32 // BITS
    mask_code: tl.constexpr = (1 << BITS) - 1
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    row_ok = offs_m < M
    col_ok = offs_n < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + offs_k
        x = tl.load(X + offs_m[:, None] * stride_xm + ks[None, :], mask=row_ok[:, None], other=0.0)
        words = tl.load(
            QW + (ks // per_word)[:, None] * stride_qk + offs_n[None, :], mask=col_ok[None, :], other=0
        )
        codes = (words >> ((ks % per_word) * BITS)[:, None]) & mask_code
        group = k0 // GROUP
        s = tl.load(S + group * stride_sg + offs_n, mask=col_ok, other=0.0)
        zs = tl.load(ZS + group * stride_sg + offs_n, mask=col_ok, other=0.0)
        w = codes.to(tl.float32) * s.to(tl.float32)[None, :] - zs.to(tl.float32)[None, :]
        acc += tl.dot(x, w.to(x.dtype), input_precision="ieee")
    out = acc.to(Out.dtype.element_ty)
    tl.store(Out + offs_m[:, None] * stride_om + offs_n[None, :], out, mask=row_ok[:, None] & col_ok[None, :])


def matmul(x: torch.Tensor, weight: TritonWeight) -> torch.Tensor:
    """``x @ W.T`` for ``x`` [..., in] on the weight's device."""
    rows = x.reshape(-1, x.shape[-1])
    if weight.perm is not None:
        rows = rows[:, weight.perm]
    rows = rows.contiguous()
    m, n, k = rows.shape[0], weight.out_features, weight.in_features
    out = torch.empty(m, n, dtype=x.dtype, device=x.device)
    block_m = 16 if m <= 16 else 32 if m <= 32 else 64
    block_n, block_k = 64, math.gcd(weight.group_size, 64)  # a power of two dividing the group
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n))
    _dequant_matmul_kernel[grid](
        rows,
        weight.qweight,
        weight.scales,
        weight.zero_scales,
        out,
        m,
        n,
        k,
        rows.stride(0),
        weight.qweight.stride(0),
        weight.scales.stride(0),
        out.stride(0),
        GROUP=weight.group_size,
        BITS=weight.bits,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_K=block_k,
    )
    return out.reshape(*x.shape[:-1], n)
