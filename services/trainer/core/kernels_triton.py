"""Triton kernels for CUDA: RMSNorm, rotary embedding, cross-entropy (forward and backward).

Imported only by ``kernels`` when a CUDA device and Triton are present. Each matches its torch
reference in ``kernels`` (checked by tests/unit/trainer/test_trainer_kernels_cuda.py on a GPU).
Written by hand because they fuse what torch runs as several kernels: one read and one write of
the activations per op, and cross-entropy's gradient computed in its forward pass (no [N, V]
softmax kept for backward), as Liger and InternEvo's kernels do.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl

# ------------------------------------------------------------------------------------ RMSNorm


@triton.jit
def _rms_fwd(X, W, Y, RSTD, stride, N, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < N
    x = tl.load(X + row * stride + cols, mask=mask, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / N + eps)
    tl.store(RSTD + row, rstd)
    w = tl.load(W + cols, mask=mask, other=0.0)
    normed = (x * rstd).to(Y.dtype.element_ty)  # cast before the scale, as LlamaRMSNorm does
    tl.store(Y + row * stride + cols, w * normed, mask=mask)


@triton.jit
def _rms_bwd(DY, X, W, RSTD, DX, DW, stride, N, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < N
    x = tl.load(X + row * stride + cols, mask=mask, other=0.0).to(tl.float32)
    dy = tl.load(DY + row * stride + cols, mask=mask, other=0.0).to(tl.float32)
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    rstd = tl.load(RSTD + row)
    xhat = x * rstd
    wdy = w * dy
    dx = rstd * (wdy - xhat * tl.sum(wdy * xhat, axis=0) / N)
    tl.store(DX + row * stride + cols, dx, mask=mask)
    tl.store(DW + row * stride + cols, dy * xhat, mask=mask)  # per-row partials, summed in torch


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).contiguous()
        rows, n = x2.shape
        y = torch.empty_like(x2, dtype=torch.result_type(weight, x2))
        rstd = torch.empty(rows, device=x.device, dtype=torch.float32)
        block = triton.next_power_of_2(n)
        _rms_fwd[(rows,)](x2, weight, y, rstd, x2.stride(0), n, eps, BLOCK=block)
        ctx.save_for_backward(x2, weight, rstd)
        ctx.block, ctx.shape = block, shape
        return y.view(*shape[:-1], n)

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        x2, weight, rstd = ctx.saved_tensors
        rows, n = x2.shape
        dy2 = dy.reshape(rows, n).contiguous()
        dx = torch.empty(rows, n, device=x2.device, dtype=torch.float32)
        dw_rows = torch.empty(rows, n, device=x2.device, dtype=torch.float32)
        _rms_bwd[(rows,)](dy2, x2, weight, rstd, dx, dw_rows, x2.stride(0), n, BLOCK=ctx.block)
        return dx.to(x2.dtype).view(ctx.shape), dw_rows.sum(0).to(weight.dtype), None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return _RMSNorm.apply(x, weight, eps)  # type: ignore[no-any-return]


# ------------------------------------------------------------------------------------- rotary


@triton.jit
def _rope(X, COS, SIN, Y, H, T, HALF: tl.constexpr, sign):
    # one program per (batch, head, position) row of X [B, H, T, D]; cos/sin are [B, T, D]
    pid = tl.program_id(0)
    t = pid % T
    b = pid // (H * T)
    cols = tl.arange(0, HALF)
    base = pid * 2 * HALF
    cbase = (b * T + t) * 2 * HALF
    x1 = tl.load(X + base + cols).to(tl.float32)
    x2 = tl.load(X + base + HALF + cols).to(tl.float32)
    c1 = tl.load(COS + cbase + cols).to(tl.float32)
    c2 = tl.load(COS + cbase + HALF + cols).to(tl.float32)
    s1 = tl.load(SIN + cbase + cols).to(tl.float32) * sign
    s2 = tl.load(SIN + cbase + HALF + cols).to(tl.float32) * sign
    tl.store(Y + base + cols, x1 * c1 - x2 * s1)
    tl.store(Y + base + HALF + cols, x2 * c2 + x1 * s2)


def _rope_launch(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, sign: float) -> torch.Tensor:
    x = x.contiguous()
    b, h, t, d = x.shape
    y = torch.empty_like(x)
    _rope[(b * h * t,)](x, cos.contiguous(), sin.contiguous(), y, h, t, HALF=d // 2, sign=sign)
    return y


class _Rotary(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(cos, sin)
        return _rope_launch(x, cos, sin, 1.0)

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        cos, sin = ctx.saved_tensors
        return _rope_launch(dy, cos, sin, -1.0), None, None  # the inverse rotation


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, H, T, D] (D a power of two), cos/sin [B, T, D]; the half-rotation layout of Llama."""
    return _Rotary.apply(x, cos, sin)  # type: ignore[no-any-return]


# ------------------------------------------------------------------------------- cross-entropy


@triton.jit
def _ce_fwd_bwd(LOGITS, LABELS, LOSS, DLOGITS, stride, V, ignore_index, inv_n, BLOCK: tl.constexpr):
    # Online softmax over the row in blocks; the gradient is written in the same pass.
    row = tl.program_id(0)
    label = tl.load(LABELS + row)
    base = LOGITS + row * stride
    if label == ignore_index:
        for start in range(0, V, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            tl.store(DLOGITS + row * stride + cols, tl.zeros([BLOCK], tl.float32), mask=cols < V)
        tl.store(LOSS + row, 0.0)
        return
    m = float("-inf")
    s = 0.0
    for start in range(0, V, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        x = tl.load(base + cols, mask=cols < V, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(x, axis=0))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), axis=0)
        m = m_new
    lse = m + tl.log(s)
    target = tl.load(base + label).to(tl.float32)
    tl.store(LOSS + row, lse - target)
    for start in range(0, V, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        x = tl.load(base + cols, mask=cols < V, other=float("-inf")).to(tl.float32)
        grad = tl.exp(x - lse) - tl.where(cols == label, 1.0, 0.0)
        tl.store(DLOGITS + row * stride + cols, grad * inv_n, mask=cols < V)


class _CrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
        logits = logits.contiguous()
        n, v = logits.shape
        count = int((labels != ignore_index).sum())
        losses = torch.empty(n, device=logits.device, dtype=torch.float32)
        grad = torch.empty(n, v, device=logits.device, dtype=torch.float32)
        block = min(4096, triton.next_power_of_2(v))
        _ce_fwd_bwd[(n,)](
            logits, labels, losses, grad, logits.stride(0), v, ignore_index, 1.0 / max(count, 1), BLOCK=block
        )
        ctx.save_for_backward(grad.to(logits.dtype))
        if count == 0:
            return losses.sum() * float("nan")  # as torch: the mean over no tokens
        return losses.sum() / count

    @staticmethod
    def backward(ctx: Any, dloss: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (grad,) = ctx.saved_tensors
        return grad * dloss, None, None


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    return _CrossEntropy.apply(logits, labels, ignore_index)  # type: ignore[no-any-return]
