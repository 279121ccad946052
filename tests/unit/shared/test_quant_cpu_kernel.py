"""puyu's W4A8 / W8A8 CPU kernel (``shared.quantization.cpu_kernel``, ``puyu::wxa8_linear``) against
references computed in float64 with plain torch, and the fallbacks to the exact weight-only path.

The kernel quantises the activations per row (symmetric int8, ``sx = absmax / 127``): with that
rounding reproduced in the reference (``quantised_rows``, from the original, unpermuted inputs and the
weight ``QuantizedWeight.dequantize`` reconstructs), it equals the dequantised-weight matmul up to
floating-point rounding; against the unquantised activations it is within 2% of the output's range.
The kernel's tests skip where the CPU lacks AVX512-VNNI; the fallbacks run everywhere.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from shared.quantization import QuantLinear, cpu_kernel, kernels
from shared.quantization.grid import QuantizedWeight, quantize_rtn

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def vnni() -> None:
    if not cpu_kernel.cpu_supported():
        pytest.skip("this CPU has no AVX512-VNNI (the W4A8/W8A8 kernel's instructions): fallback only")
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        pytest.skip("no C++ compiler to build the W4A8/W8A8 kernel with")
    assert cpu_kernel.available(), "the W4A8/W8A8 kernel did not build: see the warning logged"


def random_weight(out_features: int, in_features: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(out_features, in_features, generator=generator) * 0.05
    weight[:, 3] *= 20  # an outlier channel, and groups whose values are all positive
    weight[:8, :64] = weight[:8, :64].abs()
    return weight


def grid(
    bits: int, group_size: int, act_order: bool, out_features: int = 80, seed: int = 0
) -> QuantizedWeight:
    """An RTN grid of a random [out, 256] weight (zeros >= 1, as the GPTQ v1 layout stores them);
    ``act_order``: its groups scattered over the inputs."""
    weight = quantize_rtn(random_weight(out_features, 256, seed), bits, group_size, min_zero=1)
    if not act_order:
        return weight
    perm = torch.randperm(256, generator=torch.Generator().manual_seed(seed + 1))
    return QuantizedWeight(
        weight.codes[:, perm], weight.scales, weight.zeros, weight.g_idx[perm], bits, group_size
    )


def quantised_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The activations as the kernel rounds them: (int8 codes as float64 [M, in], scales [M, 1])."""
    rows = x.reshape(-1, x.shape[-1]).float()
    absmax = rows.abs().amax(dim=-1, keepdim=True)
    inverse = torch.where(absmax > 0, 127.0 / absmax, torch.zeros_like(absmax))  # fp32, as the kernel
    codes = torch.round(rows * inverse).clamp(-127, 127)  # ties to even, as vcvtps2dq
    return codes.double(), (absmax / 127.0).double()


def reference(x: torch.Tensor, weight: QuantizedWeight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``sx * (xq @ W.T)`` in float64, W the dequantised weight [out, in] in the inputs' own order."""
    codes, scales = quantised_rows(x)
    out = codes @ weight.dequantize(torch.float64).T * scales
    if bias is not None:
        out = out + bias.double()
    return out.reshape(*x.shape[:-1], weight.out_features)


def exact(x: torch.Tensor, weight: QuantizedWeight) -> torch.Tensor:
    """The unquantised activations times the dequantised weight, float64."""
    return x.double() @ weight.dequantize(torch.float64).T


def inputs(rows: int, dtype: torch.dtype, seed: int = 3) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, 256, generator=generator)
    x[:, 7] *= 8  # an outlier activation channel: the row's scale follows it
    if rows > 2:
        x[1] = 0  # an all-zero row (scale 0)
    return x.to(dtype)


def assert_matches(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype) -> None:
    """``got`` equals ``want`` (float64) up to the output dtype's rounding and fp32 sums."""
    assert got.dtype == dtype and got.shape == want.shape
    span = float(want.abs().max())
    if dtype == torch.float32:
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6 * span)
    else:  # one bf16 rounding of the fp32 result
        torch.testing.assert_close(got.double(), want, rtol=2**-8 * 1.01, atol=1e-6 * span)


@pytest.mark.usefixtures("vnni")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("act_order", [False, True], ids=["in-order", "act-order"])
@pytest.mark.parametrize("group_size", [32, 64, 128, -1])
@pytest.mark.parametrize("bits", [4, 8])
def test_kernel_equals_the_dequantised_matmul_of_the_quantised_activations(
    bits: int, group_size: int, act_order: bool, dtype: torch.dtype
) -> None:
    weight = grid(bits, group_size, act_order)
    prepared = kernels.prepare(weight, dtype, exact=False)
    assert isinstance(prepared, cpu_kernel.WxA8Weight)
    assert (prepared.perm is not None) == (act_order and group_size != -1)
    for rows in (1, 3, 32, 33, 70):  # 70: more than one chunk of 64 rows
        x = inputs(rows, dtype)
        assert_matches(kernels.matmul(x, prepared), reference(x, weight), dtype)


@pytest.mark.usefixtures("vnni")
@pytest.mark.parametrize("out_features", [16, 48, 80, 256])  # 1, 3, 5 and 16 tiles of 16 channels
def test_every_tile_remainder_and_leading_dimensions(out_features: int) -> None:
    weight = grid(4, 64, False, out_features=out_features, seed=out_features)
    prepared = cpu_kernel.prepare(weight, 64, None)
    assert prepared is not None
    x = inputs(2 * 7, torch.float32).reshape(2, 7, 256)
    assert_matches(cpu_kernel.matmul(x, prepared), reference(x, weight), torch.float32)


@pytest.mark.usefixtures("vnni")
def test_rows_are_split_over_threads_when_the_tiles_are_too_few() -> None:
    """One block of tiles and 6 threads: the rows are shared out in chunks (of 12 rows here)."""
    weight = grid(8, 64, True, out_features=16)
    prepared = kernels.prepare(weight, torch.bfloat16, exact=False)
    assert isinstance(prepared, cpu_kernel.WxA8Weight)
    threads = torch.get_num_threads()
    torch.set_num_threads(6)
    try:
        x = inputs(70, torch.bfloat16)
        got = kernels.matmul(x, prepared)
    finally:
        torch.set_num_threads(threads)
    assert_matches(got, reference(x, weight), torch.bfloat16)


@pytest.mark.usefixtures("vnni")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_the_bias_is_added_before_the_one_rounding(dtype: torch.dtype) -> None:
    weight = grid(8, 128, False)
    bias = torch.randn(weight.out_features, generator=torch.Generator().manual_seed(4)).half()
    prepared = cpu_kernel.prepare(weight, 128, None)
    assert prepared is not None
    x = inputs(5, dtype)
    assert_matches(cpu_kernel.matmul(x, prepared, bias), reference(x, weight, bias.float()), dtype)


@pytest.mark.usefixtures("vnni")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("bits", [4, 8])
def test_kernel_is_within_two_percent_of_the_unquantised_activations(bits: int, dtype: torch.dtype) -> None:
    for group_size, act_order in ((32, False), (128, True), (-1, False)):
        weight = grid(bits, group_size, act_order, seed=group_size)
        prepared = kernels.prepare(weight, dtype, exact=False)
        assert isinstance(prepared, cpu_kernel.WxA8Weight)
        x = torch.randn(33, 256, generator=torch.Generator().manual_seed(5)).to(dtype)
        want = exact(x, weight)
        error = (kernels.matmul(x, prepared).double() - want).abs().max()
        assert float(error / (want.max() - want.min())) < 0.02


@pytest.mark.usefixtures("vnni")
def test_serving_takes_the_kernel_for_bf16_and_the_exact_path_for_fp32() -> None:
    weight = grid(4, 64, True)
    bias = torch.randn(weight.out_features, generator=torch.Generator().manual_seed(6))
    x = inputs(4, torch.float32)
    served = QuantLinear.from_quantized(weight, "gptq", bias)
    assert served.serve_only(torch.bfloat16) > 0 and served.kernel == "wxa8-int4"
    got = served(x.bfloat16())
    assert_matches(got, reference(x.bfloat16(), weight, served.bias), torch.bfloat16)

    fp32 = QuantLinear.from_quantized(weight, "gptq", bias)
    plain = QuantLinear.from_quantized(weight, "gptq", bias)
    assert fp32.serve_only(torch.float32) > 0 and fp32.kernel == "dequant-int4"
    assert torch.equal(fp32(x), plain(x))  # the exact fp32 path, as before serving

    opted = QuantLinear.from_quantized(weight, "gptq", bias)
    assert opted.serve_only(torch.float32, exact=False) > 0 and opted.kernel == "wxa8-int4"
    assert_matches(opted(x), reference(x, weight, opted.bias), torch.float32)


@pytest.mark.parametrize("bits", [4, 8])
def test_without_vnni_serving_keeps_the_exact_path(bits: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu_kernel, "_state", {})
    monkeypatch.setattr(cpu_kernel, "cpu_supported", lambda: False)
    weight = grid(bits, 64, True)
    assert not cpu_kernel.available()
    assert cpu_kernel.prepare(weight, 64, None) is None
    x = inputs(5, torch.bfloat16)
    served, plain = (QuantLinear.from_quantized(weight, "gptq") for _ in range(2))
    assert served.serve_only(torch.bfloat16) > 0
    assert served.kernel == f"aten-int{bits}"
    assert torch.equal(served(x), plain(x))


@pytest.mark.parametrize("switch", ["PUYU_QUANT_CPU_KERNEL", "PUYU_NATIVE_OPS"])
def test_the_switch_turns_the_kernel_off(switch: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu_kernel, "_state", {})
    monkeypatch.setenv(switch, "off")
    assert not cpu_kernel.available()
    assert kernels.prepare(grid(4, 64, False), torch.bfloat16, exact=False).__class__ is kernels.CpuWeight


@pytest.mark.parametrize(
    ("bits", "out_features", "in_features", "group_size"),
    [
        (4, 40, 256, 32),  # out_features not a multiple of 16: no kernel at all (dequantised)
        (8, 40, 256, 32),  # ... aten's int8 path
        (8, 24, 72, -1),  # per-channel over 72 inputs, not a multiple of 16: dequantised (bf16)
        (4, 32, 72, -1),  # ... int4: dequantised
    ],
)
def test_unsupported_shapes_keep_the_exact_path(
    bits: int, out_features: int, in_features: int, group_size: int
) -> None:
    weight = quantize_rtn(random_weight(out_features, in_features, 7), bits, group_size, min_zero=1)
    size = in_features if group_size == -1 else group_size
    assert not cpu_kernel.supports(weight, size)
    served, plain = (QuantLinear.from_quantized(weight, "gptq") for _ in range(2))
    served.serve_only(torch.bfloat16)
    assert not served.kernel.startswith("wxa8")
    x = torch.randn(3, in_features, generator=torch.Generator().manual_seed(8)).bfloat16()
    assert torch.equal(served(x), plain(x))


def test_fp16_activations_keep_the_exact_path() -> None:
    prepared = kernels.prepare(grid(4, 64, False), torch.float16, exact=False)
    assert isinstance(prepared, kernels.CpuWeight)


def test_a_failed_build_logs_the_compiler_error_and_falls_back(tmp_path: Path) -> None:
    """In a process of its own (the working library may be loaded in this one): a source that does
    not compile leaves ``available()`` False, with the compiler's error in the warning."""
    if shutil.which(os.environ.get("CXX", "c++")) is None or not cpu_kernel.cpu_supported():
        pytest.skip("needs a C++ compiler and an AVX512-VNNI CPU (elsewhere the build is never tried)")
    broken = tmp_path / "broken.cpp"
    broken.write_text("this is not C++;\n", encoding="utf-8")
    script = textwrap.dedent(
        f"""
        import logging, sys
        logging.basicConfig(level=logging.INFO, stream=sys.stdout)
        from pathlib import Path
        from shared.quantization import cpu_kernel
        cpu_kernel.SOURCE = Path({str(broken)!r})
        assert not cpu_kernel.available()
        print("FELL BACK")
        """
    )
    run = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "PUYU_KERNEL_CACHE": str(tmp_path / "cache")},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "FELL BACK" in run.stdout
    assert "did not build" in run.stdout and "error" in run.stdout.split("did not build")[1]


@pytest.mark.parametrize("native", [True, False], ids=["native", "torch-ops"])
@pytest.mark.parametrize(("bits", "group_size", "act_order"), [(4, 64, True), (4, 256, False), (8, 32, True)])
def test_fp32_layers_rebuild_the_reference_weight_exactly(
    bits: int, group_size: int, act_order: bool, native: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fp32 activations: the codes rebuilt into an fp32 weight (puyu's one-pass op, or torch ops where
    it did not build) equal ``QuantizedWeight.dequantize`` bit for bit, and the layer equals F.linear
    over that weight."""
    from shared import native_ops

    if not native:
        monkeypatch.setattr(native_ops, "_loaded", {kernels.DEQUANTIZE.name: False})
    elif not native_ops.load(kernels.DEQUANTIZE):
        pytest.skip("puyu's dequantize op needs AVX2/FMA and a C++ compiler (it did not load here)")
    weight = grid(bits, group_size, act_order, seed=bits)
    prepared = kernels.prepare(weight, torch.float32)
    assert isinstance(prepared, kernels.DequantWeight)
    order = torch.argsort(weight.g_idx, stable=True) if act_order else torch.arange(256)
    rebuilt = kernels.dequantized(prepared)
    assert torch.equal(rebuilt, weight.dequantize(torch.float32)[:, order])
    x = inputs(6, torch.float32)
    bias = torch.randn(weight.out_features, generator=torch.Generator().manual_seed(9))
    want = torch.nn.functional.linear(x, weight.dequantize(torch.float32), bias)
    torch.testing.assert_close(kernels.matmul(x, prepared, bias), want, rtol=1e-5, atol=1e-5)


def test_fp32_layers_keep_their_own_weight_for_the_backward() -> None:
    """With autograd recording (a LoRA over a quantised base), each layer's rebuilt weight is its own:
    the scratch buffer, which the next layer overwrites, would corrupt the input gradients."""
    first, second = grid(4, 64, False, seed=1), grid(4, 64, False, out_features=256, seed=2)
    layers = [QuantLinear.from_quantized(w, "gptq") for w in (second, first)]  # 256 -> 256 -> 80
    x = inputs(3, torch.float32).requires_grad_()
    layers[1](layers[0](x)).sum().backward()
    assert {layer.kernel for layer in layers} == {"dequant-int4"}
    w1, w2 = (w.dequantize(torch.float32) for w in (second, first))
    x_ref = x.detach().clone().requires_grad_()
    ((x_ref @ w1.T) @ w2.T).sum().backward()
    assert x.grad is not None and x_ref.grad is not None
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-5)
