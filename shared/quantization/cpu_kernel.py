"""puyu's W4A8 / W8A8 CPU matmul (``puyu::wxa8_linear``, ``csrc/wxa8_linear.cpp``) on AVX512-VNNI.

Why puyu's own: no maintained library ships a CPU W4A8 kernel installable here (torchao's x86
da8w4 kernel is missing from its PyPI wheel, which has no sdist).

Activations are quantised per row to int8 (symmetric, ``sx = absmax / 127``) inside the op; the weights
keep their unsigned codes, the u8 operand of ``vpdpbusd`` (u8 x s8 -> s32), as llama.cpp's Q4_0 x Q8_0
dot products do. Per group of input channels the int32 sum ``sum_k q[n,k] xq[m,k] - z[g,n] sum_k xq[m,k]``
is exact; it is converted once and scaled by the group's scale, and the row by ``sx``. The result is
the dequantised weight times the *quantised* activations, so unlike ``kernels`` (weight-only, exact to
floating-point rounding) it differs from the reference by the activations' rounding (up to ~0.5% of the
output's range): ``QuantLinear`` takes it where a model is prepared for serving (``prepare_for_serving``:
bf16 models by default, fp32 ones with ``exact=False``); the weight-only path stays the exact one.

The C++ source is compiled at first use and cached by ``shared.native_ops`` (the system C++ compiler
and ninja). Where the CPU lacks AVX512-VNNI, or the build fails, ``available()`` is False (logged
once, with the compiler's first error lines) and the callers keep the weight-only path.
``PUYU_QUANT_CPU_KERNEL=off`` turns it off (as does ``PUYU_NATIVE_OPS=off``, every native kernel's switch).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from shared import native_ops
from shared.quantization.grid import QuantizedWeight

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("csrc") / "wxa8_linear.cpp"
NAME = "puyu_wxa8_linear"
TILE = 16  # output channels per tile of the packed layout
# u8 x s8 products summed over a group in int32: |q - z| <= 255 and |xq| <= 127
MAX_GROUP = (2**31 - 1) // (255 * 127)
CPU_FLAGS = ("avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni")
COMPILE_FLAGS = ("-O3", "-fopenmp", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512vnni")

_state: dict[str, bool] = {}
_op: Any = None  # torch.ops.puyu.wxa8_linear.default once loaded (the overload resolved once)


@dataclass
class WxA8Weight:
    """A layer's weight in the kernel's layout (any activation dtype the kernel takes)."""

    bits: int
    group_size: int
    perm: torch.Tensor | None  # int64 [in]: input channels in group order; None when already in order
    packed: torch.Tensor  # uint8 tiles (csrc/wxa8_linear.cpp describes the layout)
    scales: torch.Tensor  # float32 [groups, out]
    zeros: torch.Tensor  # int32 [groups, out]


def cpu_supported() -> bool:
    """An x86-64 Linux CPU whose flags include AVX512-VNNI (and the AVX512 subsets the kernel uses)."""
    return all(flag in native_ops.cpu_flags() for flag in CPU_FLAGS)


def available() -> bool:
    """Whether ``puyu::wxa8_linear`` can run here; builds (or loads the built) library at the first call."""
    global _op
    if "available" not in _state:  # native_ops.load serialises the build; this only caches the answer
        loaded = _load()
        if loaded:
            _op = torch.ops.puyu.wxa8_linear.default
        _state["available"] = loaded
    return _state["available"]


def _load() -> bool:
    if (
        os.environ.get("PUYU_QUANT_CPU_KERNEL", "").lower() in ("0", "off", "false", "no")
        or native_ops.disabled()
    ):
        log.info(
            "W4A8/W8A8 CPU kernel off (PUYU_QUANT_CPU_KERNEL / PUYU_NATIVE_OPS): quantised layers use aten's kernels"
        )
        return False
    if not cpu_supported():
        log.info("this CPU has no AVX512-VNNI: quantised layers use aten's weight-only kernels")
        return False
    if hasattr(torch.ops.puyu, "wxa8_linear"):  # loaded already (another copy of this module)
        return True
    op = native_ops.NativeOp(
        name=NAME,
        sources=(SOURCE,),
        cpu_flags=CPU_FLAGS,
        cflags=COMPILE_FLAGS,
        what="quantised layers use aten's weight-only kernels",
    )
    return native_ops.load(op)


def supports(weight: QuantizedWeight, group_size: int) -> bool:
    """Whether the kernel takes this grid (its groups made contiguous, ``group_size`` each)."""
    return (
        weight.bits in (4, 8)
        and weight.out_features % TILE == 0
        and group_size % 16 == 0
        and weight.in_features % group_size == 0
        and group_size <= MAX_GROUP
    )


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """The codes [out, in] (0..2**bits-1) in the kernel's tiles: uint8 [out/16, in*16*bits/8]."""
    out_features, in_features = codes.shape
    tiles = out_features // TILE
    codes = codes.to(torch.uint8)
    if bits == 8:  # [tiles, 16, in/4, 4] -> [tiles, in/4, 16, 4]
        layout = codes.reshape(tiles, TILE, in_features // 4, 4).permute(0, 2, 1, 3)
    else:  # inputs 8i..8i+3 in the low nibbles, 8i+4..8i+7 in the high ones
        halves = codes.reshape(tiles, TILE, in_features // 8, 2, 4)
        layout = (halves[:, :, :, 0] | (halves[:, :, :, 1] << 4)).permute(0, 2, 1, 3)
    return layout.contiguous().reshape(tiles, -1)


def prepare(weight: QuantizedWeight, group_size: int, perm: torch.Tensor | None) -> WxA8Weight | None:
    """The kernel's form of ``weight`` whose groups are contiguous after ``perm`` (``kernels.group_order``);
    None where the kernel does not apply or cannot run here."""
    if not supports(weight, group_size) or not available():
        return None
    codes = weight.codes if perm is None else weight.codes[:, perm]
    n_groups = weight.in_features // group_size
    return WxA8Weight(
        bits=weight.bits,
        group_size=group_size,
        perm=None if perm is None else perm.to(torch.int64).contiguous(),
        packed=pack(codes, weight.bits),
        scales=weight.scales[:n_groups].float().contiguous(),
        zeros=weight.zeros[:n_groups].to(torch.int32).contiguous(),
    )


def matmul(x: torch.Tensor, weight: WxA8Weight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ W.T (+ bias)`` for ``x`` [..., in] (float32 or bfloat16), in ``x``'s dtype; the bias (any
    float dtype) is added in fp32 before the one rounding."""
    if _op is None and not available():
        raise RuntimeError("the W4A8/W8A8 CPU kernel is not available here")
    out: torch.Tensor = _op(
        x, weight.packed, weight.scales, weight.zeros, weight.perm, bias, weight.bits, weight.group_size
    )
    return out
