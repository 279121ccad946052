"""What to quantise and how: the method, the integer grid, and the checkpoint layout it is written in."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from shared.quantization.errors import InvalidQuantSpec

Method = Literal["rtn", "awq", "gptq"]
Layout = Literal["awq-gemm", "gptq"]

METHODS: tuple[str, ...] = ("rtn", "awq", "gptq")
BITS: tuple[int, ...] = (4, 8)


@dataclass(frozen=True)
class QuantSpec:
    """One quantisation request.

    ``group_size``: input channels sharing one scale and zero; -1 is one group per output row.
    ``sym``: a fixed zero at the middle of the grid instead of a fitted one (GPTQ only; RTN and AWQ are
    asymmetric, as AutoAWQ's ``zero_point=True``). ``desc_act``: GPTQ's act-order (columns quantised by
    decreasing Hessian diagonal). ``clip``: AWQ's search of a per-group clipping range.
    ``min_calibration_tokens``: AWQ and GPTQ refuse a calibration set with fewer tokens than this.
    """

    method: Method
    bits: int = 4
    group_size: int = 128
    sym: bool = False
    desc_act: bool = False
    clip: bool = True
    damp_percent: float = 0.01
    awq_grid: int = 20
    gptq_block_size: int = 128
    min_calibration_tokens: int = 256

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise InvalidQuantSpec(f"method {self.method!r} is not one of {', '.join(METHODS)}")
        if self.bits not in BITS:
            raise InvalidQuantSpec(f"{self.bits}-bit weights are not supported; choose 4 or 8")
        if self.group_size != -1 and self.group_size <= 0:
            raise InvalidQuantSpec(f"group size {self.group_size} must be positive, or -1 for one per row")
        if self.sym and self.method != "gptq":
            raise InvalidQuantSpec(f"{self.method} is asymmetric (zero points); sym applies to gptq only")
        if self.desc_act and self.method != "gptq":
            raise InvalidQuantSpec("desc_act (act-order) applies to gptq only")
        if self.layout == "awq-gemm" and self.group_size == -1:
            raise InvalidQuantSpec("AWQ's GEMM layout needs a positive group size (e.g. 128)")
        if not 0 < self.damp_percent < 1:
            raise InvalidQuantSpec(f"damp_percent {self.damp_percent} must lie in (0, 1)")

    @property
    def needs_calibration(self) -> bool:
        return self.method != "rtn"

    @property
    def layout(self) -> Layout:
        """AWQ 4-bit is written in AutoAWQ's GEMM layout; everything else in GPTQ's.

        AutoAWQ's GEMM packer (and vLLM's AWQ reader) only know 4 bits, while the GPTQ layout with
        ``desc_act`` false holds any group-wise asymmetric or symmetric grid at 4 or 8 bits and is read
        by gptqmodel, optimum/transformers, vLLM and TGI. An RTN or 8-bit AWQ result is such a grid
        (AWQ's scales are already folded into the neighbouring weights), so it is labelled ``gptq`` with
        the true method in ``meta``, rather than ``awq``, which would promise a 4-bit GEMM layout.
        """
        return "awq-gemm" if self.method == "awq" and self.bits == 4 else "gptq"

    def min_zero(self) -> int:
        """The smallest zero point the layout stores without a borrow (see ``packing.pack_gptq``)."""
        return 1 if self.layout == "gptq" and not self.sym else 0

    def quantization_config(self) -> dict[str, Any]:
        """The ``quantization_config`` entry of ``config.json``, as the readers of the layout expect it."""
        if self.layout == "awq-gemm":
            # transformers' AwqConfig.to_dict and AutoAWQ's save_quantized write these keys.
            return {
                "quant_method": "awq",
                "bits": self.bits,
                "group_size": self.group_size,
                "zero_point": True,
                "version": "gemm",
                "modules_to_not_convert": None,
            }
        # gptqmodel's QuantizeConfig.to_dict (what transformers' GPTQConfig reads back).
        return {
            "quant_method": "gptq",
            "bits": self.bits,
            "group_size": self.group_size,
            "desc_act": self.desc_act,
            "sym": self.sym,
            "lm_head": False,
            "damp_percent": self.damp_percent,
            "true_sequential": True,
            "static_groups": False,
            "checkpoint_format": "gptq",
            "pack_dtype": "int32",
            "meta": {"quantizer": ["puyu"], "method": self.method},
        }
