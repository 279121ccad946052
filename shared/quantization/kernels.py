"""Weight-only int4 and int8 matmuls on the CPU, exact up to floating-point rounding.

The kernels are aten's ``_weight_int4pack_mm_for_cpu`` and ``_weight_int8pack_mm``: the ones torchao's
int4/int8 weight-only CPU layouts dispatch to, shipped inside torch itself, so they cost no extra
dependency and stay maintained with torch.

Both take a grid without zero points in the shape the layouts store, so the weight is re-expressed:
int4: ``(q - z) * s = (q - 8) * s + (8 - z) * s``, the kernel's ``(q - 8) * scale + zero`` form;
int8: ``(q - z) * s = (q - 128) * s + (128 - z) * s``, an int8 matmul per group plus the group's input
sum times ``(128 - z) * s``. GPTQ's act-order is handled by permuting the input channels so that each
group's channels are contiguous.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from shared.quantization.grid import QuantizedWeight

INT4_GROUP_SIZES = (32, 64, 128, 256)


@dataclass
class CpuWeight:
    """A layer's weight prepared for one kernel and one activation dtype."""

    bits: int
    group_size: int
    perm: torch.Tensor | None  # input channels in group order; None when already in order
    packed: torch.Tensor  # int4: the kernel's tiles; int8: int8 codes - 128 [out, in]
    scales: torch.Tensor  # int4: [groups, out, 2] scale and zero; int8: [groups, out]
    offsets: torch.Tensor | None  # int8: (128 - z) * s [groups, out]; int4: None


def group_order(weight: QuantizedWeight) -> tuple[int, torch.Tensor | None] | None:
    """(group size, permutation) making every group contiguous and equally sized; None if impossible."""
    size = weight.in_features if weight.group_size == -1 else weight.group_size
    if weight.in_features % size:
        return None
    expected = (torch.arange(weight.in_features) // size).to(weight.g_idx.dtype)
    if torch.equal(weight.g_idx, expected):
        return size, None
    perm = torch.argsort(weight.g_idx, stable=True)
    if not torch.equal(weight.g_idx[perm], expected):
        return None
    return size, perm


def prepare(weight: QuantizedWeight, dtype: torch.dtype) -> CpuWeight | None:
    """The kernel form of ``weight`` for activations of ``dtype``; None where no kernel applies."""
    order = group_order(weight)
    if order is None:
        return None
    size, perm = order
    codes = weight.codes if perm is None else weight.codes[:, perm]
    n_groups = weight.in_features // size
    scales = weight.scales[:n_groups].float()
    zeros = weight.zeros[:n_groups].float()
    if weight.bits == 4:
        if size not in INT4_GROUP_SIZES:
            return None
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.contiguous(), 1)
        scale_zero = torch.stack([scales, (8 - zeros) * scales], dim=-1).to(dtype).contiguous()
        return CpuWeight(4, size, perm, packed, scale_zero, None)
    if weight.bits == 8:
        packed = (codes - 128).to(torch.int8).contiguous()
        return CpuWeight(8, size, perm, packed, scales.to(dtype), ((128 - zeros) * scales).to(dtype))
    return None


def matmul(x: torch.Tensor, weight: CpuWeight) -> torch.Tensor:
    """``x @ W.T`` for ``x`` [..., in] with the prepared weight."""
    rows = x.reshape(-1, x.shape[-1])
    if weight.perm is not None:
        rows = rows[:, weight.perm]
    rows = rows.contiguous()
    if weight.bits == 4:
        out = torch.ops.aten._weight_int4pack_mm_for_cpu(
            rows, weight.packed, weight.group_size, weight.scales
        )
    else:
        assert weight.offsets is not None
        size = weight.group_size
        n_groups = weight.scales.shape[0]
        group_sums = rows.reshape(rows.shape[0], n_groups, size).sum(dim=-1)
        out = group_sums @ weight.offsets
        for g in range(n_groups):
            columns = slice(g * size, (g + 1) * size)
            out += torch.ops.aten._weight_int8pack_mm(
                rows[:, columns].contiguous(), weight.packed[:, columns].contiguous(), weight.scales[g]
            )
    return out.reshape(*x.shape[:-1], out.shape[-1])
