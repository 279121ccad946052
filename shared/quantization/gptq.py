"""GPTQ: rounding column by column while compensating each column's error on the ones not yet rounded.

The error is weighed by the layer's input Hessian ``H = 2 X Xᵀ`` over the calibration tokens; the
algorithm is AutoGPTQ's ``GPTQ.fasterquant`` (blocks of columns, the Cholesky factor of H⁻¹, a
dampening of ``damp_percent`` of the mean diagonal, group parameters fitted when a group's first
column is reached, optional act-order by decreasing diagonal). Layers are quantised in the order
the data flows through them (q/k/v, o, gate/up, down: ``true_sequential``), each seeing the inputs
produced by the ones already rounded, and the next decoder layer sees this one's quantised output.
"""

from __future__ import annotations

import torch
from torch import nn

from shared.quantization.calibration import LayerInput, recording_inputs, run_layer
from shared.quantization.checks import projection
from shared.quantization.grid import QuantizedWeight, group_params, round_codes
from shared.quantization.spec import QuantSpec

SEQUENTIAL = (
    ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    ("self_attn.o_proj",),
    ("mlp.gate_proj", "mlp.up_proj"),
    ("mlp.down_proj",),
)


class Hessian:
    """The running ``2/n Σ x xᵀ`` of a layer's inputs, as AutoGPTQ's ``add_batch``."""

    def __init__(self, columns: int) -> None:
        self.matrix = torch.zeros(columns, columns, dtype=torch.float32)
        self.samples = 0

    def add(self, x: torch.Tensor) -> None:
        rows = x.reshape(-1, x.shape[-1]).float()
        count = rows.shape[0]
        self.matrix *= self.samples / (self.samples + count)
        self.samples += count
        rows = rows * (2 / self.samples) ** 0.5
        self.matrix += rows.T @ rows


@torch.no_grad()
def quantize_layer(
    layer: nn.Module, inputs: list[LayerInput], spec: QuantSpec
) -> tuple[dict[str, QuantizedWeight], list[LayerInput]]:
    """Round ``layer``'s projections in data-flow order; return them and the next layer's inputs."""
    quantized: dict[str, QuantizedWeight] = {}
    for names in SEQUENTIAL:
        linears = {name: projection(layer, name) for name in names}
        hessians = {name: Hessian(linear.in_features) for name, linear in linears.items()}

        def record(name: str, x: torch.Tensor, sink: dict[str, Hessian] = hessians) -> None:
            sink[name].add(x)

        with recording_inputs(dict(linears), record):
            for item in inputs:
                run_layer(layer, item)
        for name, linear in linears.items():
            quantized[name] = quantize_weight(linear.weight, hessians[name].matrix, spec)
            # The later projections must see what this one will compute once rounded.
            linear.weight.copy_(quantized[name].dequantize(linear.weight.dtype))
    outputs = [run_layer(layer, item) for item in inputs]
    return quantized, [LayerInput(out, item.kwargs) for out, item in zip(outputs, inputs, strict=True)]


def quantize_weight(weight: torch.Tensor, hessian: torch.Tensor, spec: QuantSpec) -> QuantizedWeight:
    """GPTQ of one weight [out, in] given its input Hessian [in, in]."""
    w = weight.detach().float().clone()
    h = hessian.clone()
    out_features, columns = w.shape
    size = columns if spec.group_size == -1 else spec.group_size
    min_zero = spec.min_zero()

    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    perm = torch.argsort(torch.diag(h), descending=True) if spec.desc_act else torch.arange(columns)
    w, h = w[:, perm], h[perm][:, perm]

    h += spec.damp_percent * torch.mean(torch.diag(h)) * torch.eye(columns)
    h_inv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)

    codes = torch.zeros_like(w)
    n_groups = columns // size
    scales = torch.zeros(n_groups, out_features)
    zeros = torch.zeros(n_groups, out_features)
    scale = zero = torch.zeros(out_features)
    for start in range(0, columns, spec.gptq_block_size):
        end = min(start + spec.gptq_block_size, columns)
        block = w[:, start:end].clone()
        errors = torch.zeros_like(block)
        h_block = h_inv[start:end, start:end]
        for i in range(end - start):
            column = start + i
            if column % size == 0:
                # Fitted on the group's columns as they stand now, corrections so far included
                # (AutoGPTQ reads them from ``w``, which misses this block's own corrections).
                group = torch.cat([block[:, i : i + size], w[:, end : column + size]], dim=1)
                scale, zero = group_params(group, spec.bits, sym=spec.sym, min_zero=min_zero)
                scales[column // size], zeros[column // size] = scale, zero
            current = block[:, i]
            code = round_codes(current[:, None], scale, zero, spec.bits)[:, 0]
            codes[:, column] = code
            error = (current - (code - zero) * scale) / h_block[i, i]
            block[:, i:] -= error[:, None] @ h_block[i, i:][None, :]
            errors[:, i] = error
        w[:, end:] -= errors @ h_inv[start:end, end:]

    inverse = torch.argsort(perm)
    g_idx = (torch.arange(columns) // size)[inverse]
    return QuantizedWeight(
        codes=codes[:, inverse].to(torch.int32),
        scales=scales,
        zeros=zeros.to(torch.int32),
        g_idx=g_idx.to(torch.int32),
        bits=spec.bits,
        group_size=spec.group_size,
    )
