"""The integer grid: group-wise scales and zero points, round-to-nearest, and the exact dequantisation.

Every method ends here: RTN rounds the weight as it is, AWQ rounds a rescaled (and clipped) weight,
GPTQ rounds column by column while compensating the error. Scales are rounded to fp16 *before* the
codes are chosen, because both checkpoint layouts store fp16 scales: the codes are then the nearest
ones for the scale a reader will use, and ``dequantize`` is exactly what any reader computes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class QuantizedWeight:
    """A linear layer's weight on the grid: ``(codes - zeros[g]) * scales[g]`` for each input's group g.

    ``codes`` int32 [out, in]; ``scales`` float32 [groups, out] (fp16-representable); ``zeros`` int32
    [groups, out]; ``g_idx`` int32 [in], the group of each input channel (``i // group_size`` except
    after GPTQ's act-order).
    """

    codes: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor
    g_idx: torch.Tensor
    bits: int
    group_size: int

    @property
    def out_features(self) -> int:
        return int(self.codes.shape[0])

    @property
    def in_features(self) -> int:
        return int(self.codes.shape[1])

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight [out, in] a reader reconstructs, computed in fp32 and then cast to ``dtype``."""
        g = self.g_idx.long()
        weight = (self.codes - self.zeros[g].T).float() * self.scales[g].T.float()
        return weight.to(dtype)


def max_code(bits: int) -> int:
    return 2**bits - 1


def group_params(
    w: torch.Tensor, bits: int, *, sym: bool = False, min_zero: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero for each row of ``w`` [rows, n] (one group per row), as GPTQ's ``Quantizer``.

    The range always includes 0 (so that zero is exactly representable); ``min_zero=1`` keeps the
    zero at 1 or above for the GPTQ v1 layout, which stores ``zero - 1``: a row whose zero would
    round to 0 gets the grid [-scale, (max-1) * scale] instead, which still covers it.
    """
    maxq = max_code(bits)
    w = w.float()
    xmin = w.amin(dim=1).clamp(max=0)
    xmax = w.amax(dim=1).clamp(min=0)
    if sym:
        xmax = torch.maximum(xmin.abs(), xmax)
        xmin = torch.where(xmin < 0, -xmax, xmin)
    flat = (xmin == 0) & (xmax == 0)
    xmin = torch.where(flat, torch.full_like(xmin, -1.0), xmin)
    xmax = torch.where(flat, torch.ones_like(xmax), xmax)
    scale = _fp16_scale((xmax - xmin) / maxq)
    if sym:
        zero = torch.full_like(scale, (maxq + 1) // 2)
    else:
        zero = torch.round(-xmin / scale).clamp(0, maxq)
        if min_zero:
            low = zero < min_zero
            scale = torch.where(low, _fp16_scale(torch.maximum(xmax / (maxq - 1), scale)), scale)
            zero = torch.where(low, torch.full_like(zero, min_zero), zero)
    return scale, zero


def _fp16_scale(scale: torch.Tensor) -> torch.Tensor:
    # Rounded up so the stored fp16 scale never shrinks the range the fp32 one covered.
    smallest = torch.finfo(torch.float16).tiny
    rounded = scale.clamp(min=smallest, max=torch.finfo(torch.float16).max).half().float()
    return torch.where(
        rounded < scale, torch.nextafter(rounded.half(), torch.tensor(torch.inf).half()).float(), rounded
    )


def round_codes(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """Codes of ``w`` [rows, n] on the grid (scale, zero) of each row; float tensor of integers."""
    return torch.clamp(torch.round(w.float() / scale[:, None]) + zero[:, None], 0, max_code(bits))


def quantize_rtn(
    w: torch.Tensor, bits: int, group_size: int, *, sym: bool = False, min_zero: int = 0
) -> QuantizedWeight:
    """Round-to-nearest of ``w`` [out, in], group-wise along the input dimension."""
    out_features, in_features = w.shape
    size = in_features if group_size == -1 else group_size
    groups = w.float().reshape(out_features * (in_features // size), size)
    scale, zero = group_params(groups, bits, sym=sym, min_zero=min_zero)
    codes = round_codes(groups, scale, zero, bits).reshape(out_features, in_features)
    n_groups = in_features // size
    return QuantizedWeight(
        codes=codes.to(torch.int32),
        scales=scale.reshape(out_features, n_groups).T.contiguous(),
        zeros=zero.reshape(out_features, n_groups).T.contiguous().to(torch.int32),
        g_idx=(torch.arange(in_features) // size).to(torch.int32),
        bits=bits,
        group_size=group_size,
    )


def fake_quantize(
    w: torch.Tensor, bits: int, group_size: int, *, sym: bool = False, min_zero: int = 0
) -> torch.Tensor:
    """``w`` rounded to its grid and back, in ``w``'s dtype (AWQ's search and GPTQ's bookkeeping)."""
    return quantize_rtn(w, bits, group_size, sym=sym, min_zero=min_zero).dequantize(w.dtype)
