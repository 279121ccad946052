"""Quantised folders written by ``quantize_folder``, opened by ``shared.hf_models`` and served by puyu's
engine, each checked against the dequantised reference.

The reference never goes through puyu's loader: each packed layer of the written folder is unpacked
with the layout's unpacker (checked against AutoAWQ's and gptqmodel's own in ``test_quant_kernels``)
into a plain ``weight``, the ``quantization_config`` is dropped, and the folder is read by
transformers' own class, or for InternLM2 by its original modeling code (XTuner's), which splits the
fused ``wqkv`` itself. puyu's side runs the aten int4/int8 kernels (the CPU path), and the Triton
kernel runs under ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from contracts.events.inference import WorkerAnnouncement
from services.inference_gateway.announce import snapshot
from services.inference_gateway.core.engine import Engine
from services.inference_gateway.core.pool import ModelPool
from services.inference_gateway.core.sampling import SamplingParams
from services.inference_gateway.core.worker_table import WorkerTable
from services.inference_gateway.openai.serving_models import OpenAIServingModels
from services.inference_gateway.router import Router
from shared.hf_models import load_causal_lm
from shared.quantization import QuantLinear, QuantSpec, quantize_folder
from shared.quantization.packing import PackedWeight, unpack_awq, unpack_gptq
from tests.support.model_references import build_folder, load_reference

pytestmark = pytest.mark.slow  # quantises four folders (about a minute on a quiet machine)

FP32_ATOL = 2e-4  # the kernels sum in another order than a dense fp32 matmul
CASES = {
    # family, method, bits, desc_act: each CPU kernel (aten int4 and int8), both layouts, act-order
    "llama-awq4": ("llama", "awq", 4, False),
    "qwen2-gptq8": ("qwen2", "gptq", 8, False),
    "internlm2-gptq4-actorder": ("internlm2", "gptq", 4, True),
    "internlm2-awq4": ("internlm2", "awq", 4, False),
}


def calibration(vocab: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(5)
    return [torch.randint(3, vocab, (64,), generator=generator).tolist() for _ in range(6)]


def dequantised_copy(quantised: Path, out: Path) -> Path:
    """``quantised`` as a floating-point folder: each layer's packed tensors replaced by its weight."""
    shutil.copytree(quantised, out)
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    quant = config.pop("quantization_config")
    config["torch_dtype"] = "float32"
    config.pop("dtype", None)
    (out / "config.json").write_text(json.dumps(config), encoding="utf-8")
    tensors = load_file(out / "model.safetensors")
    for name in [n for n in tensors if n.endswith(".qweight")]:
        prefix = name.removesuffix(".qweight")
        packed = PackedWeight(
            tensors.pop(name),
            tensors.pop(f"{prefix}.qzeros"),
            tensors.pop(f"{prefix}.scales"),
            tensors.pop(f"{prefix}.g_idx", None),
        )
        if quant["quant_method"] == "awq":
            weight = unpack_awq(packed, quant["bits"], quant["group_size"])
        else:
            weight = unpack_gptq(packed, quant["bits"], quant["group_size"], v1=True)
        tensors[f"{prefix}.weight"] = weight.dequantize(torch.float32)
    tensors = {name: t.float() if t.is_floating_point() else t for name, t in tensors.items()}
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    return out


@pytest.fixture(scope="module", params=sorted(CASES))
def quantised(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(puyu's quantised folder, its dequantised copy) for one case."""
    architecture, method, bits, desc_act = CASES[str(request.param)]
    root = tmp_path_factory.mktemp(str(request.param))
    source = build_folder(root / "source", architecture, request)
    vocab = int(json.loads((source / "config.json").read_text(encoding="utf-8"))["vocab_size"])
    # a short AWQ search (awq_grid 5): these tests check loading and serving, not AWQ's quality
    spec = QuantSpec(
        method=method, bits=bits, group_size=32, desc_act=desc_act, min_calibration_tokens=256, awq_grid=5
    )
    report = quantize_folder(source, root / "quantised", spec, calibration(vocab))
    assert report.model_type == architecture and report.calibration_tokens == 6 * 64
    return report.out_dir, dequantised_copy(report.out_dir, root / "dequantised")


def test_the_folder_keeps_its_family_layout(quantised: tuple[Path, Path]) -> None:
    folder, _ = quantised
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    names = set(load_file(folder / "model.safetensors"))
    if config["model_type"] == "internlm2":
        assert {"model.layers.0.attention.wqkv.qweight", "model.layers.0.feed_forward.w2.qweight"} <= names
        assert (folder / "modeling_internlm2.py").is_file()
    else:
        assert "model.layers.0.self_attn.q_proj.qweight" in names
    assert not any(name.endswith("proj.weight") or name.endswith("wqkv.weight") for name in names)


def test_logits_equal_the_dequantised_reference(quantised: tuple[Path, Path]) -> None:
    folder, reference_folder = quantised
    model, fmt = load_causal_lm(folder, dtype="float32")
    assert fmt.quantization_config is not None
    layers = [m for m in model.modules() if isinstance(m, QuantLinear)]
    assert len(layers) == 7 * model.config.num_hidden_layers
    reference = load_reference(reference_folder)
    ids = torch.randint(3, int(model.config.vocab_size), (2, 19), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = model(ids).logits
        want = reference(ids, use_cache=False).logits
    assert {layer.kernel for layer in layers} == {f"dequant-int{layers[0].bits}"}  # the fp32 CPU path ran
    torch.testing.assert_close(got, want, atol=FP32_ATOL, rtol=1e-4)


async def test_the_engine_serves_it_as_the_reference_decodes(quantised: tuple[Path, Path]) -> None:
    folder, reference_folder = quantised
    engine = Engine.load(folder, dtype="float32", device="cpu", block_size=4, max_batch_size=2).start()
    engine.eos_ids = set()  # both requests run their 8 tokens, as the reference does
    layers = [m for m in engine.model.modules() if isinstance(m, QuantLinear)]
    # the kernel's copy serves; the checkpoint's packed one was freed (no second copy of the weights)
    assert layers and all(layer.released and layer.qweight.numel() == 0 for layer in layers)
    prompts = [[5, 9, 13, 21, 8], [7, 30, 4, 11, 19, 23, 6, 12, 40]]
    params = SamplingParams(max_tokens=8, temperature=0, logprobs=0)
    try:
        outs = await asyncio.gather(*[engine.generate(p, params) for p in prompts])
    finally:
        engine.close()
    served = [[lp.token_id for lp in out.logprobs] for out in outs]
    reference = load_reference(reference_folder)
    for prompt, tokens in zip(prompts, served, strict=True):
        ids = torch.tensor([prompt])
        with torch.no_grad():
            for _ in range(8):
                ids = torch.cat([ids, reference(ids, use_cache=False).logits[:, -1:].argmax(-1)], dim=1)
        assert tokens == ids[0, len(prompt) :].tolist()


def test_triton_kernel_under_the_interpreter() -> None:
    """The Triton kernel's cases (``triton_interpreted_cases.py``) in a process of their own started
    with ``TRITON_INTERPRET=1``: the interpreter must be on before Triton is first imported."""
    pytest.importorskip("triton", reason="triton is not installed")
    cases = Path(__file__).with_name("triton_interpreted_cases.py")
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(cases)],
        env={**os.environ, "TRITON_INTERPRET": "1"},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and "skipped" not in run.stdout


async def test_a_worker_announces_the_quantisation_it_serves(quantised: tuple[Path, Path]) -> None:
    """The worker's announcement (the ``puyu_workers`` KV value), the gateway's table of workers and
    ``/v1/models`` all name the served version's quantisation."""
    folder, reference_folder = quantised
    quant = json.loads((folder / "config.json").read_text(encoding="utf-8"))["quantization_config"]
    expected = f"{quant.get('meta', {}).get('method', quant['quant_method'])}-int{quant['bits']}-g32"
    pool = ModelPool(loader=lambda path, name: Engine.load(path, name=name, dtype="float32", device="cpu"))
    await pool.deploy("tiny", 1, folder)
    await pool.deploy("plain", 1, reference_folder)
    try:
        announcement = snapshot(pool, "worker-a", "http://127.0.0.1:1", "127.0.0.1:2")
        by_model = {s.model_name: s.quantization for s in announcement.served}
        assert by_model == {"tiny": expected, "plain": None}
        table = WorkerTable(own_instance="gateway")
        table.update(WorkerAnnouncement.model_validate_json(announcement.model_dump_json()))
        listed = OpenAIServingModels(Router(pool=None, workers=table)).list_models().model_dump()
        cards = {card["id"]: card for card in listed["data"]}
        assert cards["tiny:1"]["quantization"] == expected and "quantization" not in cards["plain:1"]
        local = {e.name: e.quantization for e in Router(pool=pool).models()}
        assert local["tiny"] == expected and local["plain"] is None
    finally:
        for served in pool.current():
            served.engine.close()
