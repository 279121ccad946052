"""Activation-aware weight quantisation of one decoder layer, after AutoAWQ's ``AwqQuantizer``.

For each group of linear layers that read the same input, a per-input-channel scale
``s = x_mean**r / w_mean**(1 - r)`` is searched over a grid of ``r`` (AutoAWQ's ``_search_best_scale``
with ``duo_scaling``), minimising the error of the block's output when the weights are ``Q(W * s) / s``.
The scale is folded into the op before (the RMSNorm weight, or the rows of the previous linear
layer), so the model computes the same function before quantisation. An optional search then
shrinks each group's range (``_search_best_clip``), and the weights are rounded to the grid.
As in AutoAWQ, the next layer sees this layer's full-precision output.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from shared.quantization.calibration import LayerInput, first_output, recording_inputs, run_layer
from shared.quantization.checks import PROJECTIONS, projection
from shared.quantization.grid import QuantizedWeight, fake_quantize, quantize_rtn
from shared.quantization.spec import QuantSpec

# Scaling q and k changes the attention logits quadratically: AutoAWQ does not clip them.
_NOT_CLIPPED = ("self_attn.q_proj", "self_attn.k_proj")
_CLIP_TOKENS = 512
_CLIP_MAX_SHRINK = 0.5


@dataclass
class _ScaleGroup:
    previous: nn.Module  # RMSNorm or the linear layer whose output rows feed ``linears``
    linears: list[str]
    block: Callable[[torch.Tensor, LayerInput], torch.Tensor]  # the block whose output is compared


@torch.no_grad()
def quantize_layer(
    layer: nn.Module, inputs: list[LayerInput], spec: QuantSpec
) -> tuple[dict[str, QuantizedWeight], list[LayerInput]]:
    """Scale, clip and round ``layer``'s projections; return them and the next layer's inputs."""
    linears = {name: projection(layer, name) for name in PROJECTIONS}
    features: dict[str, list[torch.Tensor]] = defaultdict(list)
    with recording_inputs(dict(linears), lambda name, x: features[name].append(x)):
        outputs = [run_layer(layer, item) for item in inputs]
    next_inputs = [LayerInput(out, item.kwargs) for out, item in zip(outputs, inputs, strict=True)]

    for group in _scale_groups(layer, linears):
        scales = _search_scale(group, linears, features[group.linears[0]], inputs, spec)
        _fold(group.previous, [linears[name] for name in group.linears], scales)
        for name in group.linears:
            features[name] = [x / scales.to(x.dtype) for x in features[name]]

    quantized = {}
    for name, linear in linears.items():
        if spec.clip and name not in _NOT_CLIPPED:
            _clip(linear, torch.cat([x.reshape(-1, x.shape[-1]) for x in features[name]]), spec)
        quantized[name] = quantize_rtn(linear.weight, spec.bits, spec.group_size, min_zero=spec.min_zero())
    return quantized, next_inputs


def _scale_groups(layer: nn.Module, linears: dict[str, nn.Linear]) -> list[_ScaleGroup]:
    attention, mlp = layer.get_submodule("self_attn"), layer.get_submodule("mlp")

    def attend(x: torch.Tensor, item: LayerInput) -> torch.Tensor:
        return first_output(attention(hidden_states=x, **item.kwargs))

    groups = [
        _ScaleGroup(
            layer.get_submodule("input_layernorm"),
            ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
            attend,
        ),
        _ScaleGroup(
            layer.get_submodule("post_attention_layernorm"),
            ["mlp.gate_proj", "mlp.up_proj"],
            lambda x, _: mlp(x),
        ),
        _ScaleGroup(linears["mlp.up_proj"], ["mlp.down_proj"], lambda x, _: linears["mlp.down_proj"](x)),
    ]
    # v's output rows are o's input channels only without grouped-query attention (AutoAWQ's check).
    if linears["self_attn.v_proj"].weight.shape == linears["self_attn.o_proj"].weight.shape:
        o_proj = linears["self_attn.o_proj"]
        groups.insert(
            1, _ScaleGroup(linears["self_attn.v_proj"], ["self_attn.o_proj"], lambda x, _: o_proj(x))
        )
    return groups


def _search_scale(
    group: _ScaleGroup,
    linears: dict[str, nn.Linear],
    xs: list[torch.Tensor],
    inputs: list[LayerInput],
    spec: QuantSpec,
) -> torch.Tensor:
    layers = [linears[name] for name in group.linears]
    weight = torch.cat([linear.weight for linear in layers]).float()
    size = weight.shape[1] if spec.group_size == -1 else spec.group_size
    grouped = weight.reshape(-1, size).abs()
    w_mean = (grouped / (grouped.amax(dim=1, keepdim=True) + 1e-6)).reshape(weight.shape).mean(dim=0)
    x_mean = torch.cat([x.reshape(-1, x.shape[-1]).abs().float() for x in xs]).mean(dim=0)

    reference = [group.block(x, item) for x, item in zip(xs, inputs, strict=True)]
    originals = [linear.weight.detach().clone() for linear in layers]
    best_error, best_scales = float("inf"), torch.ones_like(x_mean)
    for scales in _candidates(x_mean, w_mean, spec.awq_grid):
        for linear, original in zip(layers, originals, strict=True):
            scaled = original.float() * scales
            linear.weight.copy_(
                fake_quantize(scaled, spec.bits, spec.group_size, min_zero=spec.min_zero()) / scales
            )
        squared, count = 0.0, 0
        for x, item, ref in zip(xs, inputs, reference, strict=True):
            diff = (group.block(x, item) - ref).float()
            squared += float(diff.pow(2).sum())
            count += diff.numel()
        if squared / count < best_error:
            best_error, best_scales = squared / count, scales
    for linear, original in zip(layers, originals, strict=True):
        linear.weight.copy_(original)
    return best_scales


def _candidates(x_mean: torch.Tensor, w_mean: torch.Tensor, grid: int) -> list[torch.Tensor]:
    """AutoAWQ's grid of ``x_mean**r / w_mean**(1 - r)``, plus no scaling at all: AutoAWQ's grid
    lacks it (its r = 0 is ``1 / w_mean``), so on a block without activation outliers the search
    could otherwise pick a scale that errs more than plain rounding."""
    candidates = [torch.ones_like(x_mean)]
    for step in range(grid):
        ratio = step / grid
        scales = (x_mean.pow(ratio) / (w_mean.pow(1 - ratio) + 1e-4)).clamp(min=1e-4)
        scales = scales / (scales.max() * scales.min()).sqrt()
        candidates.append(torch.where(torch.isfinite(scales), scales, torch.ones_like(scales)))
    return candidates


def _fold(previous: nn.Module, layers: list[nn.Linear], scales: torch.Tensor) -> None:
    """``previous``'s output divided by ``scales``, the layers' input channels multiplied by them."""
    if isinstance(previous, nn.Linear):
        rows = previous.weight[-scales.numel() :]
        rows.div_(scales.view(-1, 1).to(rows.dtype))
        if previous.bias is not None:
            previous.bias.div_(scales.to(previous.bias.dtype))
    else:
        weight: torch.Tensor = previous.weight  # type: ignore[assignment]  # an RMSNorm's
        weight.div_(scales.to(weight.dtype))
    for linear in layers:
        linear.weight.mul_(scales.view(1, -1).to(linear.weight.dtype))


def _clip(linear: nn.Linear, x: torch.Tensor, spec: QuantSpec) -> None:
    """Clamp each group of the weight to the range (shrunk from its max) that best keeps ``x @ W.T``."""
    weight = linear.weight.float()
    out_features, in_features = weight.shape
    size = in_features if spec.group_size == -1 else spec.group_size
    x = x.float()[:: max(1, x.shape[0] // _CLIP_TOKENS)]
    x = x.reshape(x.shape[0], -1, size)  # [tokens, groups, size]
    limits = []
    for rows in torch.split(weight, 64):
        w = rows.reshape(rows.shape[0], 1, -1, size)  # [out, 1, groups, size]
        original_max = w.abs().amax(dim=-1, keepdim=True)
        best_max = original_max.clone()
        least = torch.full_like(original_max, float("inf"))
        # per-group products as one batched matmul (a broadcast multiply-and-sum materialises
        # [out, tokens, groups, size] and made the search take minutes per layer on a CPU)
        reference = torch.einsum("tgs,ogs->otg", x, w[:, 0])  # [out, tokens, groups]
        for step in range(int(_CLIP_MAX_SHRINK * spec.awq_grid)):
            max_val = original_max * (1 - step / spec.awq_grid)
            clipped = torch.clamp(w, -max_val, max_val).reshape(rows.shape[0], in_features)
            rounded = fake_quantize(clipped, spec.bits, spec.group_size, min_zero=spec.min_zero())
            out = torch.einsum("tgs,ogs->otg", x, rounded.reshape(w.shape)[:, 0])
            error = (out - reference).pow(2).mean(dim=1).view(least.shape)
            better = error < least
            least[better] = error[better]
            best_max[better] = max_val[better]
        limits.append(best_max)
    best = torch.cat(limits).reshape(out_features, -1, 1)  # [out, groups, 1]
    grouped = weight.reshape(out_features, -1, size)
    clipped = torch.clamp(grouped, -best, best).reshape(out_features, in_features)
    linear.weight.copy_(clipped.to(linear.weight.dtype))
