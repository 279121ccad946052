"""The two checkpoint layouts, packed and unpacked: AutoAWQ's GEMM and GPTQ's (v1 and v2 zeros).

Both pack ``32 // bits`` codes into each int32, lowest bits first, and store fp16 ``scales`` [groups, out].

AWQ GEMM (AutoAWQ 0.2.9, ``awq/modules/linear/gemm.py`` ``WQLinear_GEMM.from_linear``; unpacked by
``awq/utils/packing_utils.py`` ``unpack_awq`` + ``reverse_awq_order``): ``qweight`` [in, out // 8] packs
along the *output* dimension, the 8 columns of a word in the order ``AWQ_ORDER``; ``qzeros``
[groups, out // 8] likewise; zeros are stored as they are. 4 bits only.

GPTQ (gptqmodel 7.7.0, ``gptqmodel/nn_modules/qlinear/__init__.py`` ``PackableQuantLinear.pack_block``,
as AutoGPTQ's ``QuantLinear.pack``): ``qweight`` [in * bits // 32, out] packs along the *input*
dimension in plain order; ``qzeros`` [groups, out * bits // 32] along the output; ``g_idx`` int32 [in].
The v1 checkpoint format (``checkpoint_format: gptq``, what every reader takes) stores ``zero - 1``
(gptqmodel ``convert_gptq_v2_to_v1_format_module`` subtracts 0x11111111 from each 4-bit word);
``gptq_v2`` stores the zeros as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from shared.quantization.grid import QuantizedWeight, max_code

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)


@dataclass
class PackedWeight:
    """The tensors of one quantised linear layer in a checkpoint (``g_idx`` is None for AWQ)."""

    qweight: torch.Tensor
    qzeros: torch.Tensor
    scales: torch.Tensor
    g_idx: torch.Tensor | None


def _pack_last(values: torch.Tensor, bits: int, order: tuple[int, ...] | None = None) -> torch.Tensor:
    """Pack the last dimension of ``values`` (integers in [0, 2**bits)) into int32 words."""
    per_word = 32 // bits
    words = values.to(torch.int64).reshape(*values.shape[:-1], -1, per_word)
    if order is not None:
        words = words[..., list(order)]
    shifts = torch.arange(per_word, dtype=torch.int64) * bits
    packed = (words << shifts).sum(dim=-1)
    return _to_int32(packed)


def _unpack_last(words: torch.Tensor, bits: int, order: tuple[int, ...] | None = None) -> torch.Tensor:
    per_word = 32 // bits
    shifts = torch.arange(per_word, dtype=torch.int64) * bits
    values = (words.to(torch.int64)[..., None] >> shifts) & max_code(bits)
    if order is not None:
        inverse = [0] * per_word
        for slot, column in enumerate(order):
            inverse[column] = slot
        values = values[..., inverse]
    return values.reshape(*words.shape[:-1], -1).to(torch.int32)


def _to_int32(words: torch.Tensor) -> torch.Tensor:
    """Unsigned 32-bit words held in int64, reinterpreted as the int32 the layouts store."""
    words = words & 0xFFFFFFFF
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def pack_awq(weight: QuantizedWeight) -> PackedWeight:
    if weight.bits != 4:
        raise ValueError("AWQ's GEMM layout holds 4-bit codes only")
    return PackedWeight(
        qweight=_pack_last(weight.codes.T.contiguous(), 4, AWQ_ORDER),
        qzeros=_pack_last(weight.zeros, 4, AWQ_ORDER),
        scales=weight.scales.half(),
        g_idx=None,
    )


def unpack_awq(packed: PackedWeight, bits: int, group_size: int) -> QuantizedWeight:
    codes = _unpack_last(packed.qweight, bits, AWQ_ORDER).T.contiguous()
    in_features = codes.shape[1]
    return QuantizedWeight(
        codes=codes,
        scales=packed.scales.float(),
        zeros=_unpack_last(packed.qzeros, bits, AWQ_ORDER),
        g_idx=(torch.arange(in_features) // group_size).to(torch.int32),
        bits=bits,
        group_size=group_size,
    )


def pack_gptq(weight: QuantizedWeight, *, v1: bool = True) -> PackedWeight:
    """The v1 layout (``v1=False``: gptq_v2, zeros as they are); the quantiser keeps asymmetric zeros
    at 1 or above so ``zero - 1`` never borrows into the neighbouring code (readers that add 1 per
    code and readers that add 0x11111111 per word then agree)."""
    if v1 and int(weight.zeros.min()) < 1:
        raise ValueError("the GPTQ v1 layout stores zero - 1: zero points must be at least 1")
    return PackedWeight(
        qweight=_pack_rows(weight.codes.T.contiguous(), weight.bits),
        qzeros=_pack_last(weight.zeros - 1 if v1 else weight.zeros, weight.bits),
        scales=weight.scales.half(),
        g_idx=weight.g_idx.to(torch.int32),
    )


def _pack_rows(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack [in, out] along ``in``: row r of the result holds inputs r * (32 // bits) + j at shift j * bits."""
    return _pack_last(values.T.contiguous(), bits).T.contiguous()


def unpack_gptq(packed: PackedWeight, bits: int, group_size: int, *, v1: bool = True) -> QuantizedWeight:
    qzeros = packed.qzeros
    if v1:
        # Word-wise, as gptqmodel's convert_gptq_v1_to_v2_format_module: undoes a writer's borrow too.
        ones = sum(1 << (bits * j) for j in range(32 // bits))
        qzeros = _to_int32(qzeros.to(torch.int64) + ones)
    codes = _unpack_last(packed.qweight.T.contiguous(), bits)  # [out, in]
    if packed.g_idx is None:
        raise ValueError("a GPTQ layer needs g_idx")
    return QuantizedWeight(
        codes=codes,
        scales=packed.scales.float(),
        zeros=_unpack_last(qzeros, bits)[:, : packed.scales.shape[1]],
        g_idx=packed.g_idx.to(torch.int32),
        bits=bits,
        group_size=group_size,
    )
