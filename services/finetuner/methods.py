"""Which finetuning methods this build and machine can run, checked before anything heavy is loaded,
and how each one loads and wraps the base model."""

from __future__ import annotations

import importlib.util
from typing import Any

from contracts.events import FinetuneSpec, LoraSpec

SUPPORTED_METHODS = ("lora", "qlora", "full", "dpo")
ADAPTER_METHODS = ("lora", "qlora", "dpo")  # methods whose output includes a PEFT adapter


class UnsupportedRequest(ValueError):
    """The request asks for something this build or machine cannot do (never succeeds on retry)."""


def check_method(method: str, device: str | None = None) -> None:
    """Refuse, with the reason, a method this build or machine cannot run.

    ``device`` is the resolved device when known; QLoRA's 4-bit NF4 base weights come from
    bitsandbytes, whose kernels need CUDA, so on a CPU-only machine it is refused here, before
    any model is loaded.
    """
    if method not in SUPPORTED_METHODS:
        raise UnsupportedRequest(
            f"unknown finetuning method {method!r}; this build supports: {', '.join(SUPPORTED_METHODS)}"
        )
    if method != "qlora":
        return
    import torch

    if not torch.cuda.is_available() or (device is not None and not device.startswith("cuda")):
        raise UnsupportedRequest(
            "QLoRA needs a CUDA GPU (bitsandbytes 4-bit NF4 base weights) and this machine has "
            "none; use method 'lora' on CPU"
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise UnsupportedRequest("QLoRA needs the bitsandbytes package: pip install 'bitsandbytes>=0.45'")


def resolve_device(requested: str) -> str:
    """'auto' picks CUDA when present; an explicit 'cuda' on a machine without one is refused."""
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise UnsupportedRequest(f"device {requested!r} requested but no CUDA GPU is available")
    if requested not in ("cpu",) and not requested.startswith("cuda"):
        raise UnsupportedRequest(f"unknown device {requested!r} (use cpu, cuda or auto)")
    return requested


def load_base(base_dir: Any, spec: FinetuneSpec, device: str) -> Any:
    """The base model as the method needs it: fp32 for lora/full/dpo, 4-bit NF4 on the GPU for qlora."""
    import torch
    from transformers import AutoModelForCausalLM

    if spec.method != "qlora":
        model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
        return model.to(device)  # type: ignore[arg-type]  # transformers types .to oddly
    from peft import prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig

    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
    index = int(device.split(":")[1]) if ":" in device else 0
    model = AutoModelForCausalLM.from_pretrained(
        base_dir, quantization_config=quant, dtype=torch.bfloat16, device_map={"": index}
    )
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=spec.gradient_checkpointing)


def lora_config(spec: LoraSpec, model: Any) -> Any:
    """peft's LoraConfig for the spec, restricted to target modules the model actually has."""
    import logging

    from peft import LoraConfig, TaskType

    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    present = [m for m in spec.target_modules if m in names]
    if not present:
        raise ValueError(f"none of the LoRA target modules {spec.target_modules} exist in this model")
    missing = sorted(set(spec.target_modules) - set(present))
    if missing:
        logging.getLogger(__name__).warning("LoRA target modules not in this model, skipped: %s", missing)
    return LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=present,
    )


def wrap(model: Any, spec: FinetuneSpec) -> Any:
    """Attach what is trained: a LoRA adapter (lora, qlora, dpo) or nothing (full: every weight)."""
    if spec.gradient_checkpointing and spec.method != "qlora":  # qlora: done by prepare_model_for_kbit
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    if spec.method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    from peft import get_peft_model

    return get_peft_model(model, lora_config(spec.lora, model))
