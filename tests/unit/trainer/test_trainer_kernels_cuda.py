"""The Triton kernels against their torch references, forward and backward (needs CUDA + Triton)."""

from __future__ import annotations

import pytest
import torch

from services.trainer.core import kernels

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        not kernels.triton_available(), reason="needs a CUDA device and Triton (the CPU runs the references)"
    ),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_rms_norm(dtype: torch.dtype) -> None:
    from services.trainer.core import kernels_triton

    x = torch.randn(4, 33, 768, device="cuda", dtype=dtype, requires_grad=True)
    w = torch.randn(768, device="cuda", requires_grad=True)
    got = kernels_triton.rms_norm(x, w, 1e-5)
    want = kernels.rms_norm_reference(x, w, 1e-5)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert torch.allclose(got, want, atol=tol, rtol=tol)
    dy = torch.randn_like(got)
    gx, gw = torch.autograd.grad(got, (x, w), dy)
    rx, rw = torch.autograd.grad(want, (x, w), dy)
    assert torch.allclose(gx, rx, atol=tol * 10, rtol=tol * 10)
    assert torch.allclose(gw, rw, atol=tol * 100, rtol=tol * 10)


def test_triton_rotary() -> None:
    from services.trainer.core import kernels_triton

    q = torch.randn(2, 8, 40, 64, device="cuda", requires_grad=True)
    angles = torch.randn(2, 40, 32, device="cuda")
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
    got = kernels_triton.rotary(q, cos, sin)
    want, _ = kernels.rotary_reference(q, q, cos, sin)
    assert torch.allclose(got, want, atol=1e-5)
    dy = torch.randn_like(got)
    assert torch.allclose(torch.autograd.grad(got, q, dy)[0], torch.autograd.grad(want, q, dy)[0], atol=1e-5)


@pytest.mark.parametrize("vocab", [1000, 32000, 92544])
def test_triton_cross_entropy(vocab: int) -> None:
    from services.trainer.core import kernels_triton

    logits = torch.randn(257, vocab, device="cuda", requires_grad=True)
    labels = torch.randint(0, vocab, (257,), device="cuda")
    labels[::5] = -100
    got = kernels_triton.cross_entropy(logits, labels)
    want = kernels.cross_entropy_reference(logits, labels)
    assert torch.allclose(got, want, atol=1e-4)
    assert torch.allclose(
        torch.autograd.grad(got, logits)[0], torch.autograd.grad(want, logits)[0], atol=1e-6
    )
