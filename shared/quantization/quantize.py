"""Quantising a loaded model in place: checks first, then the method layer by layer."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from shared.quantization import awq, gptq
from shared.quantization.calibration import first_layer_inputs
from shared.quantization.checks import PROJECTIONS, check_calibration, check_model, projection
from shared.quantization.grid import QuantizedWeight, quantize_rtn
from shared.quantization.linear import QuantLinear
from shared.quantization.spec import QuantSpec

Progress = Callable[..., None]  # progress(stage, fraction, message, **metrics), as the services use


def check_request(model: nn.Module, spec: QuantSpec, calibration: Sequence[Sequence[int]] = ()) -> None:
    """Every refusal ``quantize_model`` can raise, without computing anything."""
    check_model(model, spec)
    check_calibration(calibration, spec, _vocab_size(model))


@torch.no_grad()
def quantize_model(
    model: nn.Module,
    spec: QuantSpec,
    calibration: Sequence[Sequence[int]] = (),
    *,
    progress: Progress | None = None,
) -> nn.Module:
    """Replace every projection of ``model``'s decoder layers by a ``QuantLinear`` (in place).

    ``calibration``: token-id sequences (the caller tokenises a dataset or a text file); AWQ and GPTQ
    need them, RTN ignores them. AWQ also rewrites the RMSNorm weights and the rows of ``v_proj`` and
    ``up_proj`` it folds its scales into. ``model.config.quantization_config`` is set for saving.
    """
    layers = check_model(model, spec)
    check_calibration(calibration, spec, _vocab_size(model))
    report = progress or (lambda *_a, **_k: None)
    model.eval()
    inputs = first_layer_inputs(model, layers, calibration) if spec.needs_calibration else []
    for index, layer in enumerate(layers):
        quantized: dict[str, QuantizedWeight]
        if spec.method == "awq":
            quantized, inputs = awq.quantize_layer(layer, inputs, spec)
        elif spec.method == "gptq":
            quantized, inputs = gptq.quantize_layer(layer, inputs, spec)
        else:
            quantized = {
                name: quantize_rtn(
                    projection(layer, name).weight, spec.bits, spec.group_size, min_zero=spec.min_zero()
                )
                for name in PROJECTIONS
            }
        _replace(layer, quantized, spec)
        report("quantize", (index + 1) / len(layers), f"layer {index + 1}/{len(layers)}")
    config: Any = model.config
    config.quantization_config = spec.quantization_config()
    return model


def _replace(layer: nn.Module, quantized: dict[str, QuantizedWeight], spec: QuantSpec) -> None:
    for name, weight in quantized.items():
        linear = projection(layer, name)
        parent_name, _, child = name.rpartition(".")
        replacement = QuantLinear.from_quantized(weight, spec.layout, _bias(linear))
        setattr(layer.get_submodule(parent_name), child, replacement.to(linear.weight.device))


def _vocab_size(model: nn.Module) -> int:
    config: Any = model.config
    return int(config.vocab_size)


def _bias(linear: nn.Linear) -> torch.Tensor | None:
    return None if linear.bias is None else linear.bias.detach()


def prepare_for_serving(model: nn.Module, dtype: torch.dtype, *, exact: bool | None = None) -> int:
    """``QuantLinear.serve_only`` on every quantised layer of ``model`` (an engine's model, which runs
    in ``dtype`` and is never saved); returns the bytes freed. On the CPU, ``exact=False`` takes
    puyu's W4A8 / W8A8 kernel where it applies (AVX512-VNNI; activations rounded to int8 per row),
    ``exact=True`` aten's weight-only kernels (exact up to floating-point rounding); ``None``, the
    default: the W4A8 / W8A8 kernel for bf16 models, the exact kernels for fp32 ones."""
    return sum(m.serve_only(dtype, exact=exact) for m in model.modules() if isinstance(m, QuantLinear))
