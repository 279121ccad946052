"""Each quantised path against the dequantised reference, and both layouts against unpackers taken
from the tools that define them (AutoAWQ's own ``packing_utils``; gptqmodel's dequantisation)."""

from __future__ import annotations

import copy
import importlib.util
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from types import ModuleType

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from shared.quantization import QuantLinear, QuantSpec, load_quantized, quantize_model, save_quantized
from shared.quantization.grid import QuantizedWeight, quantize_rtn
from shared.quantization.packing import pack_awq, pack_gptq
from tests.support.hf_folders import cache_root

AUTOAWQ = ("autoawq", "0.2.9")  # an sdist only
PIP_DOWNLOAD = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary=:all:", "-q"]
PIP_DOWNLOAD += ["--disable-pip-version-check", "-d"]
TINY = {
    "vocab_size": 256,
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 128,
}
FP32_ATOL = 1e-4  # fp32 sums in another order


@pytest.fixture(scope="module")
def awq_packing_utils() -> ModuleType:
    """AutoAWQ's ``awq/utils/packing_utils.py`` (torch only), from its sdist fetched once with pip."""
    name, version = AUTOAWQ
    target = cache_root() / f"{name}-{version}-packing_utils.py"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            subprocess.run(
                [*PIP_DOWNLOAD, tmp, f"{name}=={version}"],
                check=True,
                timeout=600,
            )
            (sdist,) = Path(tmp).glob("*.tar.gz")
            with tarfile.open(sdist) as archive:
                member = archive.extractfile(f"{name}-{version}/awq/utils/packing_utils.py")
                assert member is not None
                (Path(tmp) / "packing_utils.py").write_bytes(member.read())
            os.replace(Path(tmp) / "packing_utils.py", target)
    spec = importlib.util.spec_from_file_location("autoawq_packing_utils", target)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def gptqmodel_dequantize(qweight, qzeros, scales, g_idx, bits: int) -> torch.Tensor:
    """gptqmodel 7.7.0's reading of the v1 layout, transcribed: ``convert_gptq_v1_to_v2_format_module``
    adds 0x11111111 (4-bit) / 0x01010101 (8-bit) to each qzeros word, then
    ``PackableQuantLinear.dequantize_weight`` shifts by ``wf`` and computes
    ``scales[g_idx] * (weight - zeros[g_idx])``; returns [in, out] as it does."""
    word = {4: 0b00010001000100010001000100010001, 8: 0b00000001000000010000000100000001}[bits]
    qzeros = ((qzeros.to(torch.int64) + word) & 0xFFFFFFFF).to(torch.int64)
    wf = torch.tensor(list(range(0, 32, bits)), dtype=torch.int64).unsqueeze(0)
    maxq = 2**bits - 1
    zeros = torch.bitwise_right_shift(qzeros.unsqueeze(2).expand(-1, -1, 32 // bits), wf.unsqueeze(0))
    zeros = torch.bitwise_and(zeros, maxq).reshape(qzeros.shape[0], -1)[:, : scales.shape[1]]
    weight = torch.bitwise_and(
        torch.bitwise_right_shift(
            qweight.to(torch.int64).unsqueeze(1).expand(-1, 32 // bits, -1), wf.unsqueeze(-1)
        ),
        maxq,
    )
    weight = weight.reshape(weight.shape[0] * weight.shape[1], weight.shape[2])
    g = g_idx.long()
    return scales.float()[g] * (weight - zeros[g]).float()


def random_weight(out_features: int = 96, in_features: int = 256, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(out_features, in_features, generator=generator) * 0.05
    weight[:, 3] *= 20  # an outlier channel, and groups whose values are all positive
    weight[:8, :64] = weight[:8, :64].abs()
    return weight


def test_awq_layout_reads_back_with_autoawqs_own_unpacker(awq_packing_utils: ModuleType) -> None:
    weight = quantize_rtn(random_weight(), 4, 64)
    packed = pack_awq(weight)
    assert packed.qweight.shape == (256, 96 // 8) and packed.qweight.dtype == torch.int32
    assert packed.qzeros.shape == (4, 96 // 8) and packed.scales.dtype == torch.float16
    theirs = awq_packing_utils.dequantize_gemm(packed.qweight, packed.qzeros, packed.scales, 4, 64)
    assert torch.equal(theirs.float().T, weight.dequantize().half().float())
    iweight, izeros = awq_packing_utils.reverse_awq_order(
        *awq_packing_utils.unpack_awq(packed.qweight, packed.qzeros, 4), 4
    )
    assert torch.equal(torch.bitwise_and(iweight, 15).int().T, weight.codes)
    assert torch.equal(torch.bitwise_and(izeros, 15).int(), weight.zeros)


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_layout_reads_back_with_gptqmodels_dequantisation(bits: int, act_order: bool) -> None:
    weight = quantize_rtn(random_weight(), bits, 64, min_zero=1)
    if act_order:  # groups scattered over the inputs, as GPTQ's act-order leaves them
        perm = torch.randperm(256, generator=torch.Generator().manual_seed(1))
        weight = QuantizedWeight(
            weight.codes[:, perm], weight.scales, weight.zeros, weight.g_idx[perm], bits, 64
        )
    packed = pack_gptq(weight)
    assert packed.qweight.shape == (256 * bits // 32, 96) and packed.qzeros.shape == (4, 96 * bits // 32)
    assert packed.g_idx is not None
    theirs = gptqmodel_dequantize(packed.qweight, packed.qzeros, packed.scales, packed.g_idx, bits)
    assert torch.equal(theirs.T, weight.dequantize())


def test_gptq_zeros_never_reach_zero_so_v1_needs_no_borrow() -> None:
    weight = quantize_rtn(random_weight(), 4, 64, min_zero=1)
    assert int(weight.zeros.min()) >= 1
    plain = quantize_rtn(random_weight(), 4, 64)
    assert int(plain.zeros.min()) == 0  # the all-positive groups: what min_zero=1 re-grids
    # the re-gridded groups still cover their values: error within half a step
    step = weight.scales[weight.g_idx.long()].T
    assert bool(((weight.dequantize() - random_weight()).abs() <= step / 2 + 1e-6).all())


def _model(qwen: bool = False) -> torch.nn.Module:
    torch.manual_seed(0)
    if qwen:  # q/k/v biases, grouped-query attention
        return Qwen2ForCausalLM(Qwen2Config(**{**TINY, "num_key_value_heads": 2})).eval()
    return LlamaForCausalLM(LlamaConfig(**TINY)).eval()


CALIBRATION = [
    torch.randint(0, 256, (64,), generator=torch.Generator().manual_seed(i)).tolist() for i in range(5)
]
IDS = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(99))


def _set_backend(model: torch.nn.Module, backend: str) -> None:
    for module in model.modules():
        if isinstance(module, QuantLinear):
            module.backend = backend  # type: ignore[assignment]


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("method", ["rtn", "awq", "gptq"])
def test_each_path_equals_the_dequantised_reference(method: str, bits: int, tmp_path: Path) -> None:
    model = _model(qwen=method == "gptq")
    spec = QuantSpec(method=method, bits=bits, group_size=64, desc_act=method == "gptq", awq_grid=5)  # type: ignore[arg-type]
    quantize_model(model, spec, CALIBRATION)
    layers = [m for m in model.modules() if isinstance(m, QuantLinear)]
    assert len(layers) == 14 and all(m.layout == spec.layout for m in layers)
    # the plain-Linear model with the dequantised weights is the reference
    reference = copy.deepcopy(model)
    for name, module in list(reference.named_modules()):
        if isinstance(module, QuantLinear):
            linear = torch.nn.Linear(module.in_features, module.out_features, bias=module.bias is not None)
            linear.weight.data = module.dequantize(torch.float32)
            if module.bias is not None:
                linear.bias.data = module.bias.float()
            parent, _, child = name.rpartition(".")
            setattr(reference.get_submodule(parent), child, linear)
    with torch.no_grad():
        expected = reference(IDS).logits
        x = torch.randn(5, 128)
        for dtype, atol in ((torch.float32, FP32_ATOL), (torch.bfloat16, 0.1)):
            for module in layers[:4]:  # the CPU kernels on their own, fp32 and bf16 activations
                out = module(x.to(dtype)).float()
                bias = None if module.bias is None else module.bias.to(dtype)
                ref = torch.nn.functional.linear(x.to(dtype), module.dequantize(dtype), bias).float()
                assert module._cpu_weights[dtype] is not None  # the kernel ran, not the fallback
                torch.testing.assert_close(out, ref, atol=atol * ref.abs().max().item(), rtol=0)
        kernel = model(IDS).logits
        _set_backend(model, "reference")
        dequantised = model(IDS).logits
    torch.testing.assert_close(dequantised, expected, atol=FP32_ATOL, rtol=0)
    torch.testing.assert_close(kernel, expected, atol=FP32_ATOL, rtol=0)

    save_quantized(model, tmp_path)
    loaded, fmt = load_quantized(tmp_path, dtype="float32")
    assert fmt.layout == spec.layout and fmt.bits == bits and fmt.method == method
    with torch.no_grad():
        torch.testing.assert_close(loaded(IDS).logits, kernel, atol=FP32_ATOL, rtol=0)
