"""Weight quantisation of Llama-family models (RTN, AWQ, GPTQ; 4 or 8 bits) and quantised folders.

The whole job, folder to folder (what ``puyu quantize`` and the ``quantize.requested`` job call)::

    report = quantize_folder(
        model_dir,                  # str | Path: a model folder shared.hf_models opens (llama, mistral,
                                    #   qwen2, qwen3, internlm2, internlm3), not quantised already
        out_dir,                    # str | Path: written beside and renamed into place; refused when it
                                    #   exists non-empty unless overwrite=True
        spec,                       # QuantSpec(method="awq"|"gptq"|"rtn", bits=4|8, group_size=128, ...)
        calibration,                # Sequence[str] (texts, tokenised with the folder's tokenizer) or
                                    #   Sequence[Sequence[int]] (token ids); RTN needs none
        progress,                   # None or progress(stage, fraction, message): stages load, quantize, save
        max_sequence_tokens=512,    # longer sequences are cut into windows of this many tokens
        max_calibration_tokens=65536,  # tokens beyond this are not used (bounded memory)
        overwrite=False,
    )  # -> QuantizeReport: out_dir, model_type, method, bits, group_size, layout, quantization_config,
       #    layers (names), source_bytes, quantized_bytes, compression, calibration_sequences,
       #    calibration_tokens, seconds; to_dict() for an event payload

Every refusal (``QuantizationRefusal``, a ``shared.errors.Refusal``) is raised before any compute:
spec, family, group size against the config, calibration size and ids, every layer of the model.

The parts, for callers that hold a model already::

    spec = QuantSpec(method="awq", bits=4, group_size=128)          # refusals raised here and ...
    check_request(model, spec, calibration)                         # ... here, before any compute
    quantize_model(model, spec, calibration)                        # in place: projections -> QuantLinear
    save_quantized(model, out_dir, tokenizer, fmt)                  # HF folder with quantization_config
    model, fmt = load_quantized(out_dir)                            # puyu's, AutoAWQ's or GPTQ folders

``shared.hf_models.load_causal_lm`` loads a quantised folder through ``load_quantized`` too, so every
service that opens a model folder serves a quantised one. ``calibration`` there is a list of
token-id sequences. Layouts (``packing``): AWQ 4-bit is written in AutoAWQ's GEMM layout
(``quant_method: awq, version: gemm``); RTN, GPTQ and AWQ 8-bit in the GPTQ layout
(``quant_method: gptq``, v1 zeros, ``meta.method`` naming the method). InternLM2 folders keep their
fused ``wqkv`` (stored as one quantised layer, as LMDeploy's and AutoAWQ's InternLM2 checkpoints are).
``QuantLinear`` multiplies with aten's int4/int8 weight-only CPU kernels where its grid allows, else
dequantises.
"""

from shared.quantization.checkpoint import (
    QuantizedFormat,
    describe,
    load_quantized,
    read_quantized_format,
    save_quantized,
)
from shared.quantization.checks import SUPPORTED_MODEL_TYPES, SUPPORTED_SOURCE_TYPES
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
from shared.quantization.folder import QuantizeReport, quantize_folder
from shared.quantization.grid import QuantizedWeight
from shared.quantization.linear import QuantLinear
from shared.quantization.quantize import check_request, prepare_for_serving, quantize_model
from shared.quantization.spec import QuantSpec

__all__ = [
    "SUPPORTED_MODEL_TYPES",
    "SUPPORTED_SOURCE_TYPES",
    "CalibrationTooSmall",
    "GroupSizeMismatch",
    "InvalidCalibration",
    "InvalidQuantSpec",
    "QuantLinear",
    "QuantSpec",
    "QuantizationRefusal",
    "QuantizeReport",
    "QuantizedFormat",
    "QuantizedWeight",
    "UnsupportedArchitecture",
    "UnsupportedCheckpoint",
    "UnsupportedLayer",
    "check_request",
    "describe",
    "load_quantized",
    "prepare_for_serving",
    "quantize_folder",
    "quantize_model",
    "read_quantized_format",
    "save_quantized",
]
