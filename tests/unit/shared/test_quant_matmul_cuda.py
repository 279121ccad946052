"""puyu's Triton int4/int8 dequant-matmul compiled for a CUDA device, against the dequantised weight in
fp32 (the reference ``triton_interpreted_cases.py`` checks the same kernel with under Triton's
interpreter on the CPU). Marked ``cuda``: skipped without a device, run by ``make gpu-check``."""

from __future__ import annotations

import pytest
import torch

from shared.quantization import QuantLinear
from shared.quantization.grid import QuantizedWeight, quantize_rtn

pytestmark = pytest.mark.cuda


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("group_size", [32, 128, -1])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_kernel_on_cuda_equals_the_dequantised_reference(
    bits: int, group_size: int, dtype: torch.dtype
) -> None:
    from shared.quantization import triton_matmul

    generator = torch.Generator().manual_seed(bits * 1000 + group_size)
    weight = quantize_rtn(torch.randn(512, 1024, generator=generator), bits, group_size, min_zero=1)
    x = torch.randn(3, 37, 1024, generator=generator)  # 111 rows: tiles cut at the edges
    prepared = triton_matmul.prepare(weight, dtype, torch.device("cuda"))
    assert prepared is not None
    got = triton_matmul.matmul(x.to("cuda", dtype), prepared)
    want = x.to(dtype).float() @ weight.dequantize(torch.float32).T
    assert got.shape == (3, 37, 512) and got.dtype == dtype and got.is_cuda
    # the weight tile is rounded to the activation dtype before the product, the sum is fp32
    scale = float(want.abs().max())
    tolerance = (4e-3 if dtype == torch.float16 else 2e-2) * scale
    torch.testing.assert_close(got.float().cpu(), want, atol=tolerance, rtol=1e-2)


def test_kernel_on_cuda_follows_act_order() -> None:
    from shared.quantization import triton_matmul

    generator = torch.Generator().manual_seed(3)
    weight = quantize_rtn(torch.randn(256, 512, generator=generator), 4, 64, min_zero=1)
    perm = torch.randperm(512, generator=generator)
    shuffled = QuantizedWeight(weight.codes[:, perm], weight.scales, weight.zeros, weight.g_idx[perm], 4, 64)
    x = torch.randn(9, 512, generator=generator)
    prepared = triton_matmul.prepare(shuffled, torch.float16, torch.device("cuda"))
    assert prepared is not None and prepared.perm is not None
    want = x.half().float() @ shuffled.dequantize(torch.float32).T
    got = triton_matmul.matmul(x.to("cuda", torch.float16), prepared).float().cpu()
    torch.testing.assert_close(got, want, atol=4e-3 * float(want.abs().max()), rtol=1e-2)


@pytest.mark.parametrize("layout", ["gptq", "awq-gemm"])
def test_a_layer_on_cuda_takes_the_kernel_and_equals_its_reference(layout: str) -> None:
    """``QuantLinear`` on a CUDA tensor picks the Triton kernel by itself (``backend="auto"``)."""
    generator = torch.Generator().manual_seed(4)
    bits = 8 if layout == "gptq" else 4
    weight = quantize_rtn(torch.randn(256, 512, generator=generator), bits, 128, min_zero=1)
    layer = QuantLinear.from_quantized(weight, layout, torch.randn(256, generator=generator))  # type: ignore[arg-type]
    layer = layer.to("cuda", torch.float16)
    x = torch.randn(6, 512, generator=generator).to("cuda", torch.float16)
    got = layer(x)
    assert layer.kernel == "triton"
    layer.backend = "reference"
    want = layer(x)
    torch.testing.assert_close(got.float(), want.float(), atol=4e-3 * float(want.abs().max()), rtol=1e-2)
