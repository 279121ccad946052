"""What a Hugging Face model folder holds: its ``model_type``, whether puyu supports it, its precision."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from shared.errors import Refusal

# Families transformers implements: its own classes load and save them as they are.
NATIVE_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "qwen2_moe", "mixtral"})
# Families whose folders ship their modeling code: puyu reads config and weights itself instead.
CONVERTED_TYPES = frozenset({"internlm2", "internlm3"})
SUPPORTED_TYPES = NATIVE_TYPES | CONVERTED_TYPES

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


class UnsupportedModel(Refusal):
    """The folder holds an architecture or configuration that puyu cannot load."""


@dataclass(frozen=True)
class ModelFormat:
    """How a model folder was laid out, so that a model loaded from it can be saved the same way.

    ``converted`` means puyu mapped the folder's config and weights onto a transformers class in
    memory (InternLM2/InternLM3); ``remote_code`` that the folder's own code was run (opt-in).
    ``source_config`` is the folder's ``config.json`` as read.
    """

    model_type: str
    source_dir: Path
    source_config: Mapping[str, Any] = field(repr=False)
    converted: bool = False
    remote_code: bool = False

    @property
    def quantization_config(self) -> Mapping[str, Any] | None:
        """The folder's quantisation (``config.json``'s, or AutoGPTQ's old ``quantize_config.json``)."""
        quant = self.source_config.get("quantization_config")
        if quant is None and (self.source_dir / "quantize_config.json").is_file():
            quant = {
                "quant_method": "gptq",
                **json.loads((self.source_dir / "quantize_config.json").read_text(encoding="utf-8")),
            }
        return quant if isinstance(quant, Mapping) else None


def read_config(path: str | Path) -> dict[str, Any]:
    """The folder's ``config.json``; a missing file or ``model_type`` is refused with the path."""
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        raise UnsupportedModel(f"{path} has no config.json: not a Hugging Face model folder")
    config = json.loads(config_file.read_text(encoding="utf-8"))
    if not isinstance(config, dict) or not config.get("model_type"):
        raise UnsupportedModel(f"{config_file} names no model_type")
    return config


def check_supported(model_type: str) -> None:
    if model_type not in SUPPORTED_TYPES:
        raise UnsupportedModel(
            f"model_type {model_type!r} is not supported; supported: {', '.join(sorted(SUPPORTED_TYPES))}"
        )


def checkpoint_dtype(config: Mapping[str, Any]) -> torch.dtype | None:
    """The precision the checkpoint was saved in (``torch_dtype``, or ``dtype`` in transformers 5)."""
    name = config.get("dtype") or config.get("torch_dtype")
    return _DTYPES.get(str(name).removeprefix("torch.")) if name else None


def cpu_has_native_bf16() -> bool:
    """Whether this processor multiplies bf16 in hardware (AMX or AVX512-BF16); Linux only."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    return bool(flags & {"amx_bf16", "avx512_bf16"})


def resolve_dtype(
    dtype: torch.dtype | str, device: torch.device | str, config: Mapping[str, Any]
) -> torch.dtype:
    """``auto``: the checkpoint's dtype on CUDA; on the CPU bf16 where it is native, else fp32."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in _DTYPES:
        return _DTYPES[dtype]
    if dtype != "auto":
        raise UnsupportedModel(f"dtype {dtype!r} is not one of auto, {', '.join(_DTYPES)}")
    if torch.device(device).type == "cuda":
        return checkpoint_dtype(config) or torch.float32
    return torch.bfloat16 if cpu_has_native_bf16() else torch.float32
