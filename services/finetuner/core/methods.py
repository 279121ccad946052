"""How each finetuning method loads and wraps the base model (which methods this build and machine
can run is checked before, in ``validation.py``).

Every base folder is opened through ``shared.hf_models``: the families transformers implements as
they are, InternLM2/InternLM3 as transformers' Llama (their own code is never run). LoRA therefore
targets the modules of the model as loaded, which for InternLM folders carry Llama's names:
``q_proj k_proj v_proj o_proj gate_proj up_proj down_proj``. InternLM2's own names are accepted too
and mean the same layers (``wqkv`` → q/k/v, ``wo`` → o, ``w1`` → gate, ``w3`` → up, ``w2`` → down).
In the mixture-of-experts families transformers keeps each layer's experts as one fused tensor, not
as linear modules: there LoRA adapts attention (and Qwen2-MoE's shared expert), never the experts.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from contracts.events import FinetuneSpec, LoraSpec
from services.finetuner.core.refusals import InvalidInput, UnsupportedRequest
from shared.hf_models import ModelFormat, UnsupportedModel, detect_format, load_causal_lm

log = logging.getLogger(__name__)

# InternLM2's module names -> the Llama names its layers have once loaded.
INTERNLM2_TARGETS = {
    "wqkv": ("q_proj", "k_proj", "v_proj"),
    "wo": ("o_proj",),
    "w1": ("gate_proj",),
    "w3": ("up_proj",),
    "w2": ("down_proj",),
}


def load_base(base_dir: Path, spec: FinetuneSpec, device: str) -> tuple[Any, ModelFormat]:
    """The base model as the method needs it (fp32 for lora/full/dpo, 4-bit NF4 on the GPU for
    qlora) and the layout of its folder, which the merged model is saved in."""
    import torch

    try:
        if spec.method != "qlora":
            return load_causal_lm(base_dir, dtype=torch.float32, device=device)
        fmt = detect_format(base_dir)
        with tempfile.TemporaryDirectory(prefix="puyu-qlora-base-") as staging:
            return _load_4bit(_transformers_folder(base_dir, fmt, Path(staging)), spec, device), fmt
    except UnsupportedModel as exc:
        raise InvalidInput(str(exc)) from exc


def _transformers_folder(base_dir: Path, fmt: ModelFormat, staging: Path) -> Path:
    """A folder transformers' quantizing loader reads: the base itself, or for InternLM folders the
    Llama that ``shared.hf_models`` converts them to, written once into ``staging``."""
    if not fmt.converted:
        return base_dir
    import torch

    model, _ = load_causal_lm(base_dir, dtype=torch.bfloat16)
    model.save_pretrained(staging)
    return staging


def _load_4bit(folder: Path, spec: FinetuneSpec, device: str) -> Any:
    import torch
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
    index = int(device.split(":")[1]) if ":" in device else 0
    model = AutoModelForCausalLM.from_pretrained(
        folder, quantization_config=quant, dtype=torch.bfloat16, device_map={"": index}
    )
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=spec.gradient_checkpointing)


def target_modules(requested: list[str], fmt: ModelFormat | None) -> list[str]:
    """The requested module names as the loaded model calls them (InternLM2's names mapped to Llama's)."""
    if fmt is None or fmt.model_type != "internlm2" or fmt.remote_code:
        return list(requested)
    names = [llama for name in requested for llama in INTERNLM2_TARGETS.get(name, (name,))]
    return list(dict.fromkeys(names))


def lora_config(spec: LoraSpec, model: Any, fmt: ModelFormat | None = None) -> Any:
    """peft's LoraConfig for the spec, restricted to target modules the model actually has."""
    from peft import LoraConfig, TaskType

    wanted = target_modules(spec.target_modules, fmt)
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    present = [m for m in wanted if m in names]
    if not present:
        raise UnsupportedRequest(f"none of the LoRA target modules {spec.target_modules} exist in this model")
    missing = sorted(set(wanted) - set(present))
    if missing:
        log.warning("LoRA target modules not in this model, skipped: %s", missing)
    return LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=present,
    )


def wrap(model: Any, spec: FinetuneSpec, fmt: ModelFormat | None = None) -> Any:
    """Attach what is trained: a LoRA adapter (lora, qlora, dpo) or nothing (full: every weight)."""
    if spec.gradient_checkpointing and spec.method != "qlora":  # qlora: done by prepare_model_for_kbit
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    if spec.method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    from peft import get_peft_model

    return get_peft_model(model, lora_config(spec.lora, model, fmt))
