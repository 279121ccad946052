"""Which finetuning methods this build can run, checked before anything heavy is loaded."""

from __future__ import annotations

SUPPORTED_METHODS = ("lora",)

# Methods people ask for that this build cannot do yet, and why (shown to the user as is).
_NOT_AVAILABLE = {
    "qlora": "QLoRA needs a CUDA GPU and bitsandbytes for 4-bit base weights",
    "full": "full-parameter finetuning is not in this build yet",
    "dpo": "preference training (DPO) is not in this build yet",
}


class UnsupportedRequest(ValueError):
    """The request asks for something this build or machine cannot do (never succeeds on retry)."""


def check_method(method: str) -> None:
    if method in SUPPORTED_METHODS:
        return
    why = _NOT_AVAILABLE.get(method, f"unknown finetuning method {method!r}")
    raise UnsupportedRequest(f"{why}; this build supports: {', '.join(SUPPORTED_METHODS)}")


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
