"""Weight quantisation of Llama-family models (RTN, AWQ, GPTQ; 4 or 8 bits) and quantised folders.

    spec = QuantSpec(method="awq", bits=4, group_size=128)          # refusals raised here and ...
    check_request(model, spec, calibration)                         # ... here, before any compute
    quantize_model(model, spec, calibration)                        # in place: projections -> QuantLinear
    save_quantized(model, out_dir, tokenizer)                       # HF folder with quantization_config
    model, fmt = load_quantized(out_dir)                            # puyu's, AutoAWQ's or GPTQ folders

``calibration`` is a list of token-id sequences. Layouts (``packing``): AWQ 4-bit is written in
AutoAWQ's GEMM layout (``quant_method: awq, version: gemm``); RTN, GPTQ and AWQ 8-bit in the GPTQ
layout (``quant_method: gptq``, v1 zeros, ``meta.method`` naming the method). ``QuantLinear``
multiplies with aten's int4/int8 weight-only CPU kernels where its grid allows, else dequantises.
Refusals subclass ``QuantizationRefusal`` (a ``shared.errors.Refusal``).
"""

from shared.quantization.checkpoint import (
    QuantizedFormat,
    load_quantized,
    read_quantized_format,
    save_quantized,
)
from shared.quantization.checks import SUPPORTED_MODEL_TYPES
from shared.quantization.errors import (
    CalibrationTooSmall,
    GroupSizeMismatch,
    InvalidCalibration,
    InvalidQuantSpec,
    QuantizationRefusal,
    UnsupportedArchitecture,
    UnsupportedCheckpoint,
    UnsupportedLayer,
)
from shared.quantization.grid import QuantizedWeight
from shared.quantization.linear import QuantLinear
from shared.quantization.quantize import check_request, quantize_model
from shared.quantization.spec import QuantSpec

__all__ = [
    "SUPPORTED_MODEL_TYPES",
    "CalibrationTooSmall",
    "GroupSizeMismatch",
    "InvalidCalibration",
    "InvalidQuantSpec",
    "QuantLinear",
    "QuantSpec",
    "QuantizationRefusal",
    "QuantizedFormat",
    "QuantizedWeight",
    "UnsupportedArchitecture",
    "UnsupportedCheckpoint",
    "UnsupportedLayer",
    "check_request",
    "load_quantized",
    "quantize_model",
    "read_quantized_format",
    "save_quantized",
]
