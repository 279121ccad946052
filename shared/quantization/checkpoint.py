"""Quantised model folders in the Hugging Face convention: writing puyu's, reading puyu's and others'.

A folder is a plain model folder whose ``config.json`` carries ``quantization_config`` and whose
safetensors hold, for each quantised linear layer, the packed tensors of its layout (``packing``)
instead of ``weight``; everything else (embeddings, norms, head) stays in floating point.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import init_empty_weights
from safetensors import SafetensorError
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    GenerationConfig,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedModel,
)

from shared.hf_models import ModelFormat, resolve_dtype
from shared.hf_models.formats import read_config
from shared.hf_models.loader import CONVERSIONS
from shared.hf_models.tokenizer import save_tokenizer
from shared.hf_models.weights import iter_tensors, write_safetensors
from shared.quantization import families
from shared.quantization.checks import SUPPORTED_SOURCE_TYPES
from shared.quantization.errors import UnsupportedArchitecture, UnsupportedCheckpoint
from shared.quantization.linear import QuantLinear
from shared.quantization.spec import Layout

_PACKED = ("qweight", "qzeros", "scales", "g_idx")


@dataclass(frozen=True)
class QuantizedFormat:
    """How a quantised folder is laid out: what a reader needs to rebuild its layers."""

    layout: Layout
    bits: int
    group_size: int
    gptq_v1: bool = True  # GPTQ zeros stored minus one (``checkpoint_format: gptq``)
    method: str = ""  # the method that produced it, where the folder says (puyu writes meta.method)
    quantization_config: Mapping[str, Any] = field(default_factory=dict, repr=False)


def read_quantized_format(path: str | Path) -> QuantizedFormat:
    """The folder's quantisation layout; any layout puyu does not read is refused naming it."""
    folder = Path(path)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise UnsupportedCheckpoint(f"{folder} has no config.json: not a Hugging Face model folder")
    config = json.loads(config_file.read_text(encoding="utf-8"))
    if config.get("model_type") not in SUPPORTED_SOURCE_TYPES:
        raise UnsupportedArchitecture(
            f"model_type {config.get('model_type')!r} is not read quantised; supported: {', '.join(SUPPORTED_SOURCE_TYPES)}"
        )
    quant = config.get("quantization_config")
    if quant is None and (folder / "quantize_config.json").is_file():
        # AutoGPTQ before transformers' integration kept it in a file of its own.
        quant = {
            "quant_method": "gptq",
            **json.loads((folder / "quantize_config.json").read_text(encoding="utf-8")),
        }
    if not isinstance(quant, dict):
        raise UnsupportedCheckpoint(f"{folder} is not quantised: config.json has no quantization_config")
    return _parse_quantization_config(quant)


def describe(quantization_config: Mapping[str, Any] | None) -> str | None:
    """A short label of a model's weight quantisation for announcements and model lists, e.g.
    ``awq-int4-g128`` (method, bits, group size; ``g-1``: one group per row); None when unquantised."""
    if not quantization_config:
        return None
    quant = dict(quantization_config)
    meta = quant.get("meta") if isinstance(quant.get("meta"), dict) else {}
    method = str((meta or {}).get("method") or quant.get("quant_method") or "unknown").lower()
    bits = quant.get("bits", quant.get("w_bit", "?"))
    group = quant.get("group_size", quant.get("q_group_size", "?"))
    return f"{method}-int{bits}-g{group}"


def _parse_quantization_config(quant: dict[str, Any]) -> QuantizedFormat:
    method = str(quant.get("quant_method", "")).lower()
    bits = int(quant.get("bits", quant.get("w_bit", 0)))
    group_size = int(quant.get("group_size", quant.get("q_group_size", 0)))
    meta: dict[str, Any] = quant["meta"] if isinstance(quant.get("meta"), dict) else {}
    if method == "awq":
        version = str(quant.get("version", quant.get("format", "gemm"))).lower()
        # zero_point false (gptqmodel's symmetric AWQ) still stores qzeros, all 8: read as written
        if version != "gemm" or bits != 4 or group_size <= 0:
            raise UnsupportedCheckpoint(
                f"AWQ checkpoint with version {version!r}, {bits} bits, group size {group_size}: "
                "puyu reads AutoAWQ's 4-bit GEMM layout with a positive group size"
            )
        return QuantizedFormat(
            "awq-gemm", bits, group_size, method=str(meta.get("method", "awq")), quantization_config=quant
        )
    if method == "gptq":
        checkpoint_format = str(quant.get("checkpoint_format", quant.get("format", "gptq"))).lower()
        if checkpoint_format not in ("gptq", "gptq_v2") or bits not in (4, 8) or quant.get("static_groups"):
            raise UnsupportedCheckpoint(
                f"GPTQ checkpoint with format {checkpoint_format!r}, {bits} bits, static_groups "
                f"{quant.get('static_groups')}: puyu reads the gptq and gptq_v2 formats at 4 or 8 bits"
            )
        return QuantizedFormat(
            "gptq",
            bits,
            group_size,
            gptq_v1=checkpoint_format == "gptq",
            method=str(meta.get("method", "gptq")),
            quantization_config=quant,
        )
    raise UnsupportedCheckpoint(f"quant_method {method!r} is not read; puyu reads awq (GEMM) and gptq")


def save_quantized(
    model: PreTrainedModel, out_dir: str | Path, tokenizer: Any = None, fmt: ModelFormat | None = None
) -> Path:
    """Write a model quantised by ``quantize_model`` (or loaded by ``load_quantized``) as a folder.

    ``fmt``: the layout the model was loaded from (``shared.hf_models``); an InternLM2/InternLM3 model
    is written in its own family's layout with its modeling code, as ``save_in_format`` does.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    quant = getattr(model.config, "quantization_config", None)
    if not isinstance(quant, dict):
        raise UnsupportedCheckpoint("the model holds no quantization_config: quantise it first")
    if any(getattr(module, "released", False) for module in model.modules()):
        raise UnsupportedCheckpoint(
            "the model's packed weights were freed for serving (prepare_for_serving): load the folder again to save it"
        )
    state = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)  # the embedding is the head
    if fmt is not None and fmt.converted:
        llama_config = model.config
        if not isinstance(llama_config, LlamaConfig):
            raise UnsupportedCheckpoint(
                f"a {type(llama_config).__name__} cannot be saved as {fmt.model_type}"
            )
        qfmt = _parse_quantization_config(quant)
        state = families.from_llama_state(
            state, fmt.model_type, llama_config, qfmt.layout, qfmt.bits, qfmt.group_size, qfmt.gptq_v1
        )
        config = CONVERSIONS[fmt.model_type].from_config(llama_config, fmt.source_config)
        config["quantization_config"] = quant
        config["torch_dtype"] = str(model.dtype).removeprefix("torch.")
        config.pop("dtype", None)
        for file in fmt.source_dir.glob("*.py"):  # the modeling code auto_map names
            shutil.copy2(file, out / file.name)
    else:
        config = model.config.to_dict()
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    write_safetensors(state, out)
    if model.generation_config is not None:
        model.generation_config.save_pretrained(out)
    if tokenizer is not None and fmt is not None:
        save_tokenizer(tokenizer, out, fmt)
    elif tokenizer is not None:
        tokenizer.save_pretrained(out)
    return out


def load_quantized(
    path: str | Path, *, dtype: torch.dtype | str = "auto", device: torch.device | str = "cpu"
) -> tuple[PreTrainedModel, QuantizedFormat]:
    """A quantised folder (puyu's, AutoAWQ's GEMM, AutoGPTQ's or gptqmodel's) as a causal LM whose
    quantised projections are ``QuantLinear``; ``dtype`` applies to the floating-point tensors.
    InternLM2/InternLM3 folders load as ``LlamaForCausalLM`` (wqkv split) without their code."""
    folder = Path(path)
    fmt = read_quantized_format(folder)
    source = read_config(folder)
    torch_dtype = resolve_dtype(dtype, device, source)
    conversion = CONVERSIONS.get(source["model_type"])
    config: PretrainedConfig
    try:
        if conversion is not None:
            config = conversion.to_config(source)
            state = families.to_llama_state(
                iter_tensors(folder),
                source["model_type"],
                config,
                fmt.layout,
                fmt.bits,
                fmt.group_size,
                fmt.gptq_v1,
            )
        else:
            config = AutoConfig.from_pretrained(folder)
            state = dict(iter_tensors(folder))
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
        # a truncated or foreign weight file, or packed tensors that do not fit the config
        raise UnsupportedCheckpoint(f"{folder}: cannot read its quantised weights: {exc}") from None
    config.dtype = torch_dtype
    config.quantization_config = dict(fmt.quantization_config)
    quantized = sorted({name.rsplit(".", 1)[0] for name in state if name.endswith(".qweight")})
    if not quantized:
        raise UnsupportedCheckpoint(f"{folder} holds no qweight tensor")
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    for name in quantized:
        _check_packed(folder, name, state, fmt)
        try:
            linear = model.get_submodule(name)
        except AttributeError:
            raise UnsupportedCheckpoint(
                f"{folder}: {name} is not a module of {type(model).__name__}"
            ) from None
        if not isinstance(linear, torch.nn.Linear):
            raise UnsupportedCheckpoint(f"{name} is a {type(linear).__name__}, not a linear layer")
        if f"{name}.g_idx" not in state and fmt.layout == "gptq":
            size = linear.in_features if fmt.group_size == -1 else fmt.group_size
            state[f"{name}.g_idx"] = (torch.arange(linear.in_features) // size).to(torch.int32)
        parent, _, child = name.rpartition(".")
        replacement = QuantLinear(
            linear.in_features,
            linear.out_features,
            bits=fmt.bits,
            group_size=fmt.group_size,
            layout=fmt.layout,
            bias=f"{name}.bias" in state,
            gptq_v1=fmt.gptq_v1,
            device="meta",
        )
        setattr(model.get_submodule(parent), child, replacement)
    state = {
        name: tensor
        if name.rsplit(".", 1)[-1] in _PACKED or not tensor.is_floating_point()
        else tensor.to(torch_dtype)
        for name, tensor in state.items()
    }
    tied = bool(getattr(config, "tie_word_embeddings", False))
    if tied:
        state.pop("lm_head.weight", None)
    _check_shapes(folder, model, state)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if tied:
        model.tie_weights()
        missing = [name for name in missing if name != "lm_head.weight"]
    if missing or unexpected:
        raise UnsupportedCheckpoint(
            f"{folder} does not match its config: missing {sorted(missing)[:8]}, unexpected {sorted(unexpected)[:8]}"
        )
    if (folder / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(folder)
    model.to(torch.device(device))
    model.eval()
    return model, fmt


def _check_packed(folder: Path, name: str, state: Mapping[str, torch.Tensor], fmt: QuantizedFormat) -> None:
    """Each quantised layer carries the packed tensors of its layout, as int32 (scales floating)."""
    needed = ("qweight", "qzeros", "scales")
    missing = [kind for kind in needed if f"{name}.{kind}" not in state]
    if missing:
        raise UnsupportedCheckpoint(f"{folder}: {name} lacks {', '.join(missing)}")
    for kind in ("qweight", "qzeros", "g_idx"):
        tensor = state.get(f"{name}.{kind}")
        if tensor is not None and tensor.dtype != torch.int32:
            raise UnsupportedCheckpoint(f"{folder}: {name}.{kind} is {tensor.dtype}, the layout stores int32")
    if not state[f"{name}.scales"].is_floating_point():
        raise UnsupportedCheckpoint(
            f"{folder}: {name}.scales is {state[f'{name}.scales'].dtype}, not floating"
        )


def _check_shapes(folder: Path, model: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Every tensor the shape of the module it fills (``assign=True`` would take a wrong one silently)."""
    expected = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    for name, tensor in state.items():
        target = expected.get(name)
        if target is not None and tuple(target.shape) != tuple(tensor.shape):
            raise UnsupportedCheckpoint(
                f"{folder}: {name} has shape {tuple(tensor.shape)}; the config and quantization_config "
                f"({type(model).__name__}) make it {tuple(target.shape)}"
            )
