"""The one check of a finetune request: what the spec asks for against this build and machine, then
the inputs (the base model folder, the data file).

Checks run cheapest first, so a request that can never succeed costs no model load: device, method,
ZeRO stage, base folder, data file. Each refusal is a ``FinetuneRefusal`` naming the problem. The
gRPC submit check has only the spec; the run has everything.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from contracts.events import FinetuneSpec
from services.finetuner.core.data import Dataset, load_dataset
from services.finetuner.core.refusals import InvalidInput, UnsupportedRequest
from shared.distributed import world
from shared.hf_models import UnsupportedModel, detect_format

SUPPORTED_METHODS = ("lora", "qlora", "full", "dpo")


@dataclass(frozen=True)
class ValidRequest:
    """What the check found out: the device to run on and the records to learn from (when given)."""

    device: str
    data: Dataset | None  # None when no data file was given


def validate(
    spec: FinetuneSpec,
    *,
    device: str = "auto",
    base_dir: Path | None = None,
    dataset: Path | None = None,
) -> ValidRequest:
    """Refuse, with the reason, a request that can never succeed; the parts not given are not checked.

    ``device`` is the one asked for (cpu, cuda, cuda:N, or auto: what this machine has).
    """
    resolved = resolve_device(device)
    check_method(spec.method, resolved)
    check_zero(spec)
    if base_dir is not None:
        check_base(base_dir)
    data = load_dataset(dataset, spec.data_format, spec.method) if dataset is not None else None
    return ValidRequest(resolved, data)


def resolve_device(requested: str) -> str:
    """'auto' picks CUDA when present; an explicit 'cuda' on a machine without one is refused.
    Under a launcher with several ranks on CUDA each rank takes the GPU of its local rank."""
    import torch

    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise UnsupportedRequest(f"device {requested!r} requested but no CUDA GPU is available")
    if requested not in ("cpu",) and not requested.startswith("cuda"):
        raise UnsupportedRequest(f"unknown device {requested!r} (use cpu, cuda or auto)")
    me = world()
    if requested == "cuda" and me.size > 1:
        if me.local_rank >= torch.cuda.device_count():
            raise UnsupportedRequest(
                f"local rank {me.local_rank} has no GPU: this node has {torch.cuda.device_count()} "
                "(launch at most one process per GPU)"
            )
        return f"cuda:{me.local_rank}"
    return requested


def check_method(method: str, device: str | None = None) -> None:
    """Refuse a method this build or machine cannot run.

    ``device`` is the resolved device when known; QLoRA's 4-bit NF4 base weights come from
    bitsandbytes, whose kernels need CUDA, so on a CPU-only machine it is refused here.
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


def check_zero(spec: FinetuneSpec) -> None:
    """Refuse what ZeRO cannot do here."""
    if not spec.zero_stage:
        return
    if importlib.util.find_spec("deepspeed") is None:
        raise UnsupportedRequest(f"zero_stage {spec.zero_stage} needs DeepSpeed: pip install 'puyu[train]'")
    if spec.method == "qlora":
        raise UnsupportedRequest(
            "zero_stage > 0 with method 'qlora' is not supported: DeepSpeed cannot shard bitsandbytes "
            "4-bit weights; use zero_stage 0"
        )


def check_base(base_dir: Path) -> None:
    """A model folder of a family ``shared.hf_models`` opens (read from its config, no weight loaded)."""
    if not (base_dir / "config.json").is_file():
        raise InvalidInput(f"{base_dir} is not a Hugging Face model folder (no config.json)")
    try:
        detect_format(base_dir)
    except UnsupportedModel as exc:
        raise InvalidInput(str(exc)) from exc
