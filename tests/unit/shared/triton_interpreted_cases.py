"""The Triton dequant-matmul kernel (CUDA's path for quantised layers) against the dequantised
reference, run by ``test_quant_serving.py`` in a process started with ``TRITON_INTERPRET=1`` (Triton's
interpreter, on the CPU). Not collected on its own: the file name does not start with ``test_``.
"""

from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed")
if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("run with TRITON_INTERPRET=1 (or on CUDA)", allow_module_level=True)

from shared.quantization import QuantLinear, triton_matmul
from shared.quantization.grid import QuantizedWeight, quantize_rtn


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("group_size", [32, 128, -1])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_kernel_equals_the_dequantised_reference(bits: int, group_size: int, dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(bits * 1000 + group_size)
    weight = quantize_rtn(torch.randn(80, 256, generator=generator), bits, group_size, min_zero=1)
    x = torch.randn(3, 7, 256, generator=generator).to(dtype)  # 21 rows: two row tiles of 16
    prepared = triton_matmul.prepare(weight, dtype, torch.device("cpu"))
    assert prepared is not None
    got = triton_matmul.matmul(x, prepared)
    want = x.float() @ weight.dequantize(torch.float32).T
    assert got.shape == (3, 7, 80) and got.dtype == dtype
    # fp16: the weight tile is rounded to fp16 before the product, as on CUDA
    tolerance = 1e-4 if dtype == torch.float32 else 2e-3 * float(want.abs().max())
    torch.testing.assert_close(got.float(), want, atol=tolerance, rtol=1e-3)


def test_kernel_follows_act_order() -> None:
    generator = torch.Generator().manual_seed(3)
    weight = quantize_rtn(torch.randn(64, 128, generator=generator), 4, 32, min_zero=1)
    perm = torch.randperm(128, generator=generator)
    # the same grid with its input channels shuffled: what GPTQ's act-order writes (g_idx out of order)
    shuffled = QuantizedWeight(weight.codes[:, perm], weight.scales, weight.zeros, weight.g_idx[perm], 4, 32)
    x = torch.randn(5, 128, generator=generator)
    prepared = triton_matmul.prepare(shuffled, torch.float32, torch.device("cpu"))
    assert prepared is not None and prepared.perm is not None
    want = x @ shuffled.dequantize(torch.float32).T
    torch.testing.assert_close(triton_matmul.matmul(x, prepared), want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("layout", ["gptq", "awq-gemm"])
def test_a_layer_on_the_triton_backend_equals_its_reference(layout: str) -> None:
    """``QuantLinear`` with ``backend="triton"`` (what CUDA takes by default) through the kernel."""
    generator = torch.Generator().manual_seed(4)
    bits = 8 if layout == "gptq" else 4
    weight = quantize_rtn(torch.randn(64, 128, generator=generator), bits, 64, min_zero=1)
    layer = QuantLinear.from_quantized(weight, layout, torch.randn(64, generator=generator))  # type: ignore[arg-type]
    layer.backend = "triton"
    x = torch.randn(4, 128, generator=generator)
    got = layer(x)
    assert layer.kernel == "triton"
    layer.backend = "reference"
    torch.testing.assert_close(got, layer(x), atol=1e-4, rtol=1e-4)
