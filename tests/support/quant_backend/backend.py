"""Run in the quantisation backend's venv (``install.sh``), not puyu's: what the other tools do.

    python backend.py JOB.json

``JOB.json``: ``{"ids": [[...], ...], "quantize": [[source, out, "gptq"|"awq"], ...], "logits":
[[folder, out.pt], ...]}``. ``quantize`` writes a checkpoint with gptqmodel (its GPTQ, or its AWQ in
the GEMM layout) from token-id calibration rows; ``logits`` loads a quantised folder with transformers'
``from_pretrained`` (its GPTQ/AWQ integration, on gptqmodel's torch kernels, fp32 activations) and
saves the logits of ``ids``. Quantisation runs first, so a folder it writes can be read back.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")  # its default pool wants 2 per CPU worker

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AwqConfig, GPTQConfig


def quantize(source: str, out: str, method: str, calibration: list[list[int]]) -> None:
    from gptqmodel import GPTQModel, QuantizeConfig
    from gptqmodel.quantization import FORMAT, METHOD

    options: dict = {"bits": 4, "group_size": 32}
    if method == "awq":
        options.update(quant_method=METHOD.AWQ, format=FORMAT.GEMM)
    model = GPTQModel.load(source, QuantizeConfig(**options), device="cpu")
    rows = [{"input_ids": row, "attention_mask": [1] * len(row)} for row in calibration]
    model.quantize(rows, batch_size=1)
    model.save(out)


def logits(folder: str, ids: list[list[int]]) -> torch.Tensor:
    quant = dict(AutoConfig.from_pretrained(folder).quantization_config)
    # the kernels written in plain torch, which run on any CPU (the AVX512 ones need bf16 activations)
    if quant["quant_method"] == "gptq":
        config = GPTQConfig(
            bits=quant["bits"],
            group_size=quant["group_size"],
            desc_act=quant.get("desc_act", False),
            sym=quant.get("sym", True),
            backend="torch",
        )
    else:
        config = AwqConfig(bits=quant["bits"], group_size=quant["group_size"], backend="torch_awq")
    model = AutoModelForCausalLM.from_pretrained(
        folder, device_map="cpu", dtype=torch.float32, quantization_config=config
    ).eval()
    kinds = {type(m).__module__ for m in model.modules() if type(m).__module__.startswith("gptqmodel.")}
    assert kinds, f"{folder}: transformers replaced no layer with gptqmodel's"
    with torch.no_grad():
        return model(torch.tensor(ids)).logits.float()


def main() -> None:
    job = json.loads(open(sys.argv[1], encoding="utf-8").read())
    for source, out, method in job.get("quantize", []):
        quantize(source, out, method, job["calibration"])
    for folder, out in job.get("logits", []):
        torch.save(logits(folder, job["ids"]), out)


if __name__ == "__main__":
    main()
