"""Opening a model folder as a transformers causal LM, and saving it back in the layout it came in."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import init_empty_weights
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
)

from shared.hf_models import internlm2, internlm3
from shared.hf_models.formats import (
    CONVERTED_TYPES,
    ModelFormat,
    UnsupportedModel,
    check_supported,
    read_config,
    resolve_dtype,
)
from shared.hf_models.tokenizer import save_tokenizer
from shared.hf_models.weights import iter_tensors, write_safetensors

# Building a model patches process-wide state (transformers' and accelerate's meta-device
# initialisation): one load at a time in a process, whichever service thread asks.
_LOAD_LOCK = threading.Lock()


@dataclass(frozen=True)
class Conversion:
    """A family mapped onto transformers' Llama: its config and tensor names, both ways."""

    to_config: Callable[[Mapping[str, Any]], LlamaConfig]
    from_config: Callable[[LlamaConfig, Mapping[str, Any]], dict[str, Any]]
    to_state: Callable[[Iterable[tuple[str, torch.Tensor]], LlamaConfig], dict[str, torch.Tensor]]
    from_state: Callable[[Mapping[str, torch.Tensor], LlamaConfig], dict[str, torch.Tensor]]


CONVERSIONS = {
    internlm2.MODEL_TYPE: Conversion(
        internlm2.to_llama_config,
        internlm2.from_llama_config,
        internlm2.to_llama_state,
        internlm2.from_llama_state,
    ),
    internlm3.MODEL_TYPE: Conversion(
        internlm3.to_llama_config,
        internlm3.from_llama_config,
        internlm3.to_llama_state,
        internlm3.from_llama_state,
    ),
}
assert set(CONVERSIONS) == CONVERTED_TYPES


def detect_format(path: str | Path) -> ModelFormat:
    """The folder's format without loading any weight; an unsupported ``model_type`` is refused."""
    folder = Path(path)
    source = read_config(folder)
    check_supported(source["model_type"])
    return ModelFormat(
        model_type=source["model_type"],
        source_dir=folder,
        source_config=source,
        converted=source["model_type"] in CONVERTED_TYPES,
    )


def load_causal_lm(
    path: str | Path,
    *,
    dtype: torch.dtype | str = "auto",
    device: torch.device | str = "cpu",
    trust_remote_code: bool = False,
) -> tuple[PreTrainedModel, ModelFormat]:
    """Load the folder's model in eval mode on ``device``, and say how it was laid out.

    InternLM2/InternLM3 folders become a ``LlamaForCausalLM`` without running the folder's code;
    ``trust_remote_code=True`` runs that code instead (it was written for transformers 4). A folder
    with a ``quantization_config`` (puyu's, AutoAWQ's GEMM, GPTQ) loads through
    ``shared.quantization.load_quantized``: its projections become ``QuantLinear``.
    """
    fmt = detect_format(path)
    torch_dtype = resolve_dtype(dtype, device, fmt.source_config)
    model: PreTrainedModel
    with _LOAD_LOCK:
        if fmt.quantization_config is not None:
            # here, not at the top: shared.quantization builds on this package
            from shared.quantization.checkpoint import load_quantized

            model, _ = load_quantized(fmt.source_dir, dtype=torch_dtype, device=device)
        elif fmt.converted and trust_remote_code:
            model = _load_remote_code(fmt, torch_dtype)
            fmt = ModelFormat(fmt.model_type, fmt.source_dir, fmt.source_config, remote_code=True)
        elif fmt.converted:
            model = _load_converted(fmt, CONVERSIONS[fmt.model_type], torch_dtype)
        else:
            model = AutoModelForCausalLM.from_pretrained(
                fmt.source_dir, dtype=torch_dtype, trust_remote_code=trust_remote_code
            )
    torch.nn.Module.to(model, torch.device(device))
    model.eval()
    return model, fmt


def _load_converted(fmt: ModelFormat, conversion: Conversion, dtype: torch.dtype) -> LlamaForCausalLM:
    config = conversion.to_config(fmt.source_config)
    config.dtype = dtype
    state = conversion.to_state(iter_tensors(fmt.source_dir, dtype), config)
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)  # the embedding is the head
    # Parameters on the meta device: the checkpoint's tensors replace them, no random init is spent.
    with init_empty_weights(include_buffers=False):
        model = LlamaForCausalLM(config)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if config.tie_word_embeddings:
        model.tie_weights()
        missing = [name for name in missing if name != "lm_head.weight"]
    if missing or unexpected:
        raise UnsupportedModel(
            f"{fmt.model_type} checkpoint {fmt.source_dir} does not match its config: "
            f"missing {sorted(missing)[:8]}, unexpected {sorted(unexpected)[:8]}"
        )
    if (fmt.source_dir / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(fmt.source_dir)
    return model


def _load_remote_code(fmt: ModelFormat, dtype: torch.dtype) -> PreTrainedModel:
    """The folder's own classes, built for real and then given the checkpoint's tensors.

    Not ``from_pretrained``: transformers 5 builds on the meta device and re-creates only its own
    classes' non-persistent buffers, which leaves these classes' rotary tables uninitialised.
    """
    config = AutoConfig.from_pretrained(fmt.source_dir, trust_remote_code=True)
    model = AutoModelForCausalLM.from_config(config, trust_remote_code=True, dtype=dtype)
    state = dict(iter_tensors(fmt.source_dir, dtype))
    missing, _ = model.load_state_dict(state, strict=False)
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
        missing = [name for name in missing if name not in ("output.weight", "lm_head.weight")]
    if missing:
        raise UnsupportedModel(f"{fmt.source_dir}: the checkpoint lacks {sorted(missing)[:8]}")
    return model


def save_in_format(model: PreTrainedModel, tokenizer: Any, out_dir: str | Path, fmt: ModelFormat) -> Path:
    """Save ``model`` (and ``tokenizer`` unless None) as a folder of ``fmt``'s layout, loadable by
    the code that reads the original: transformers for its own families; InternLM's own modeling
    code (copied along) for InternLM folders."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(getattr(model.config, "quantization_config", None), dict):
        from shared.quantization.checkpoint import save_quantized

        return save_quantized(model, out, tokenizer, fmt)
    if fmt.converted:
        conversion = CONVERSIONS[fmt.model_type]
        llama_config = model.config
        if not isinstance(llama_config, LlamaConfig):
            raise UnsupportedModel(
                f"a {type(llama_config).__name__} model cannot be saved as {fmt.model_type}"
            )
        _write_config(out, conversion.from_config(llama_config, fmt.source_config), model.dtype)
        write_safetensors(conversion.from_state(model.state_dict(), llama_config), out)
        model.generation_config.save_pretrained(out)
        _copy_code(fmt.source_dir, out)
    elif fmt.remote_code:
        # The folder's own classes may not save under transformers 5; their tensor names are the format.
        _write_config(out, {**fmt.source_config, "vocab_size": model.config.vocab_size}, model.dtype)
        write_safetensors(model.state_dict(), out)
        _copy_code(fmt.source_dir, out)
    else:
        model.save_pretrained(out)
    if tokenizer is not None:
        save_tokenizer(tokenizer, out, fmt)
    return out


def _write_config(out: Path, config: dict[str, Any], dtype: torch.dtype) -> None:
    # transformers 4 (which InternLM's code was written for) reads torch_dtype; 5 writes dtype.
    key = "dtype" if "dtype" in config else "torch_dtype"
    config[key] = str(dtype).removeprefix("torch.")
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _copy_code(source: Path, out: Path) -> None:
    """The folder's modeling/tokenization code, so that ``auto_map`` still points at something."""
    for file in source.glob("*.py"):
        if source.resolve() != out.resolve():
            shutil.copy2(file, out / file.name)
