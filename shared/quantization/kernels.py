"""Int4 and int8 matmuls on the CPU: weight-only ones, exact up to floating-point rounding, and
puyu's W4A8 / W8A8 kernel (``cpu_kernel``: activations quantised to int8 per row, AVX512-VNNI), which
serving takes (``prepare(..., exact=False)``) where it applies and the weight-only ones back up.

The weight-only kernels are aten's ``_weight_int4pack_mm_for_cpu`` and ``_weight_int8pack_mm``: the
ones torchao's int4/int8 weight-only CPU layouts dispatch to, shipped inside torch itself, so they
cost no extra dependency and stay maintained with torch. They serve bf16 and fp16 activations. For
fp32 activations they are slow (measured on an AVX2 CPU at 32 rows: 25-45x the fp32 dense matmul's
time), so fp32 layers rebuild their weight into a scratch buffer (``DequantWeight``: puyu's one-pass
``csrc/dequantize.cpp``, or torch ops without it) and run one fp32 matmul: the reference's arithmetic,
with the weight packed at rest.

Both take a grid without zero points in the shape the layouts store, so the weight is re-expressed:
int4: ``(q - z) * s = (q - 8) * s + (8 - z) * s``, the kernel's ``(q - 8) * scale + zero`` form;
int8: ``(q - z) * s = (q - 128) * s + (128 - z) * s``, an int8 matmul per group plus the group's input
sum times ``(128 - z) * s``. GPTQ's act-order is handled by permuting the input channels so that each
group's channels are contiguous.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from shared import native_ops
from shared.quantization import cpu_kernel
from shared.quantization.grid import QuantizedWeight

DEQUANTIZE = native_ops.NativeOp(
    name="puyu_dequantize",
    sources=(Path(__file__).with_name("csrc") / "dequantize.cpp",),
    cpu_flags=("avx2", "fma"),
    cflags=("-O3", "-fopenmp", "-mavx2", "-mfma"),
    what="fp32 quantised layers dequantise with torch ops",
)

INT4_GROUP_SIZES = (32, 64, 128, 256)
# activation dtypes puyu's W4A8 / W8A8 kernel takes (fp16 keeps the weight-only path)
WXA8_DTYPES = (torch.float32, torch.bfloat16)


@dataclass
class CpuWeight:
    """A layer's weight prepared for one kernel and one activation dtype."""

    bits: int
    group_size: int
    perm: torch.Tensor | None  # input channels in group order; None when already in order
    packed: torch.Tensor  # int4: the kernel's tiles; int8: int8 codes - 128 [out, in]
    scales: torch.Tensor  # int4: [groups, out, 2] scale and zero; int8: [groups, out]
    offsets: torch.Tensor | None  # int8: (128 - z) * s [groups, out]; int4: None


@dataclass
class DequantWeight:
    """A layer's codes for fp32 activations, rebuilt into an fp32 weight at each call."""

    bits: int
    group_size: int
    perm: torch.Tensor | None  # input channels in group order; None when already in order
    codes: torch.Tensor  # uint8 [out, in] (int8) or [out, in / 2] (int4: input 2j low nibble, 2j+1 high)
    scales: torch.Tensor  # fp32 [out, groups]
    zeros: torch.Tensor  # fp32 [out, groups]

    @property
    def out_features(self) -> int:
        return int(self.codes.shape[0])

    @property
    def in_features(self) -> int:
        return int(self.codes.shape[1]) * 8 // self.bits


_scratch = threading.local()  # one fp32 buffer per thread, as large as the largest layer it rebuilt


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


def prepare(
    weight: QuantizedWeight, dtype: torch.dtype, *, exact: bool = True
) -> CpuWeight | DequantWeight | cpu_kernel.WxA8Weight | None:
    """The kernel form of ``weight`` for activations of ``dtype``; None where no kernel applies.

    ``exact``: the exact forms only (weight-only kernels, fp32's rebuilt weight); else puyu's W4A8 /
    W8A8 kernel where it applies and runs here (AVX512-VNNI, built), the exact ones otherwise."""
    order = group_order(weight)
    if order is None:
        return None
    size, perm = order
    if not exact and dtype in WXA8_DTYPES:
        fast = cpu_kernel.prepare(weight, size, perm)
        if fast is not None:
            return fast
    codes = weight.codes if perm is None else weight.codes[:, perm]
    n_groups = weight.in_features // size
    scales = weight.scales[:n_groups].float()
    zeros = weight.zeros[:n_groups].float()
    if dtype == torch.float32 and weight.bits in (4, 8) and size % 2 == 0:
        stored = codes.to(torch.uint8)
        if weight.bits == 4:
            stored = stored[:, 0::2] | (stored[:, 1::2] << 4)
        return DequantWeight(
            weight.bits,
            size,
            perm,
            stored.contiguous(),
            scales.t().contiguous(),
            zeros.t().contiguous(),
        )
    if weight.bits == 4:
        if size not in INT4_GROUP_SIZES or weight.out_features % 16:  # aten's packing needs both
            return None
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.contiguous(), 1)
        scale_zero = torch.stack([scales, (8 - zeros) * scales], dim=-1).to(dtype).contiguous()
        return CpuWeight(4, size, perm, packed, scale_zero, None)
    if weight.bits == 8:
        if dtype == torch.bfloat16 and size % 16:  # aten's bf16 kernel reads past groups of 16k + 8
            return None
        packed = (codes - 128).to(torch.int8).contiguous()
        return CpuWeight(8, size, perm, packed, scales.to(dtype), ((128 - zeros) * scales).to(dtype))
    return None


def matmul(
    x: torch.Tensor,
    weight: CpuWeight | DequantWeight | cpu_kernel.WxA8Weight,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """``x @ W.T (+ bias)`` for ``x`` [..., in] with the prepared weight."""
    if isinstance(weight, cpu_kernel.WxA8Weight):
        return cpu_kernel.matmul(x, weight, bias)  # the bias added in fp32, before the one rounding
    if isinstance(weight, DequantWeight):
        if weight.perm is not None:
            x = x[..., weight.perm]
        # with autograd recording, the matmul keeps its weight for the backward: a buffer of its own
        rebuilt = dequantized(weight, scratch=not torch.is_grad_enabled())
        return F.linear(x, rebuilt, None if bias is None else bias.to(x.dtype))
    out = _weight_only(x, weight)
    return out if bias is None else out + bias.to(out.dtype)


def _weight_only(x: torch.Tensor, weight: CpuWeight) -> torch.Tensor:
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


def dequantized(weight: DequantWeight, *, scratch: bool = True) -> torch.Tensor:
    """``weight`` as fp32 ``[out, in]`` (in group order); ``scratch``: in this thread's scratch buffer,
    valid until the thread rebuilds another layer, else in a tensor of its own."""
    size = weight.out_features * weight.in_features
    if scratch:
        buffer: torch.Tensor | None = getattr(_scratch, "buffer", None)
        if buffer is None or buffer.numel() < size:
            buffer = _scratch.buffer = torch.empty(size, dtype=torch.float32)
        out = buffer[:size].view(weight.out_features, weight.in_features)
    else:
        out = torch.empty(weight.out_features, weight.in_features, dtype=torch.float32)
    if native_ops.load(DEQUANTIZE):
        torch.ops.puyu.dequantize_codes(
            weight.codes, weight.scales, weight.zeros, weight.bits, weight.group_size, out
        )
        return out
    codes = weight.codes
    if weight.bits == 4:
        codes = torch.stack((codes & 15, codes >> 4), dim=-1)
    grouped = codes.reshape(weight.out_features, -1, weight.group_size)
    view = out.view_as(grouped)
    torch.sub(grouped, weight.zeros.unsqueeze(-1), out=view)
    view.mul_(weight.scales.unsqueeze(-1))
    return out
