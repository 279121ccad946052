"""How each finetuning method loads and wraps the base model (which methods this build and machine
can run is checked before, in ``validation.py``)."""

from __future__ import annotations

from typing import Any

from contracts.events import FinetuneSpec, LoraSpec
from services.finetuner.core.refusals import UnsupportedRequest


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
        raise UnsupportedRequest(f"none of the LoRA target modules {spec.target_modules} exist in this model")
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
