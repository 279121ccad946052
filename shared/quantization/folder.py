"""``quantize_folder``: a model folder in, a quantised folder out, for ``puyu quantize`` and the bus job.

Every refusal comes before the model is quantised: the spec (``QuantSpec``), the family and the
group size against the folder's ``config.json`` (before its weights are read), the calibration set,
then ``check_request`` on the loaded model (every layer). Calibration texts are tokenised with the
folder's own tokenizer; long sequences are cut into windows of ``max_sequence_tokens`` and at most
``max_calibration_tokens`` are used (AutoAWQ's defaults, 128 x 512), so memory stays bounded
whatever the caller hands in. The folder is written beside ``out_dir`` and renamed into place, so a
reader never sees half a checkpoint.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from shared.hf_models import detect_format, load_causal_lm, load_tokenizer
from shared.hf_models.weights import weight_files
from shared.quantization.checkpoint import save_quantized
from shared.quantization.checks import SUPPORTED_SOURCE_TYPES, check_calibration, check_config
from shared.quantization.errors import InvalidCalibration, QuantizationRefusal, UnsupportedArchitecture
from shared.quantization.linear import QuantLinear
from shared.quantization.quantize import Progress, check_request, quantize_model
from shared.quantization.spec import QuantSpec

Calibration = Sequence[str] | Sequence[Sequence[int]]


@dataclass(frozen=True)
class QuantizeReport:
    """What ``quantize_folder`` wrote. Sizes are the bytes of the weight files on disk."""

    out_dir: Path
    model_type: str  # the source folder's family, which the output keeps
    method: str
    bits: int
    group_size: int
    layout: str  # awq-gemm | gptq
    quantization_config: dict[str, Any]
    layers: list[str]  # the quantised linear layers, as named in the loaded model
    source_bytes: int
    quantized_bytes: int
    calibration_sequences: int
    calibration_tokens: int
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def compression(self) -> float:
        """How many times smaller the weights are on disk than the source folder's."""
        return self.source_bytes / self.quantized_bytes if self.quantized_bytes else 0.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["out_dir"] = str(self.out_dir)
        out["compression"] = self.compression
        return out


def quantize_folder(
    model_dir: str | Path,
    out_dir: str | Path,
    spec: QuantSpec,
    calibration: Calibration = (),
    progress: Progress | None = None,
    *,
    max_sequence_tokens: int = 512,
    max_calibration_tokens: int = 128 * 512,
    overwrite: bool = False,
) -> QuantizeReport:
    """Quantise the model folder ``model_dir`` as ``spec`` says and write it to ``out_dir``.

    ``calibration``: texts (tokenised with the folder's tokenizer) or token-id sequences; AWQ and
    GPTQ need ``spec.min_calibration_tokens`` of them, RTN none. ``progress(stage, fraction, message)``
    is called with the stages ``load``, ``quantize`` and ``save``. The output keeps the source's
    family layout (InternLM2's fused ``wqkv`` included), so the tools that read the source read it.
    """
    started = time.monotonic()
    report = progress or (lambda *_a, **_k: None)
    source, out = Path(model_dir), Path(out_dir)
    fmt = detect_format(source)
    if fmt.source_config.get("quantization_config") is not None:
        raise UnsupportedArchitecture(f"{source} is quantised already ({_describe(fmt.source_config)})")
    if fmt.model_type not in SUPPORTED_SOURCE_TYPES:
        raise UnsupportedArchitecture(
            f"model_type {fmt.model_type!r} cannot be quantised; supported: {', '.join(SUPPORTED_SOURCE_TYPES)}"
        )
    check_config(fmt.source_config, spec)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise QuantizationRefusal(f"{out} exists and is not empty (pass overwrite=True to replace it)")
    if out.resolve() == source.resolve():
        raise QuantizationRefusal("the output folder must differ from the model folder")
    tokenizer = load_tokenizer(source)
    sequences = _calibration_ids(calibration, tokenizer, max_sequence_tokens, max_calibration_tokens)
    vocab_size = int(fmt.source_config.get("vocab_size") or len(tokenizer))
    check_calibration(sequences, spec, vocab_size)  # before the weights are read

    report("load", 0.0, f"loading {source.name}")
    # fp32: the methods search scales and solve least squares; bf16 would add its own rounding error
    model, fmt = load_causal_lm(source, dtype=torch.float32, device="cpu")
    check_request(model, spec, sequences)
    report("load", 1.0, f"loaded {fmt.model_type}")
    quantize_model(model, spec, sequences, progress=progress)

    report("save", 0.0, f"writing {out}")
    partial = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        save_quantized(model, partial, tokenizer, fmt)
        if out.exists():
            shutil.rmtree(out)
        os.replace(partial, out)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    report("save", 1.0, f"wrote {out}")
    layers = [name for name, module in model.named_modules() if isinstance(module, QuantLinear)]
    return QuantizeReport(
        out_dir=out,
        model_type=fmt.model_type,
        method=spec.method,
        bits=spec.bits,
        group_size=spec.group_size,
        layout=spec.layout,
        quantization_config=spec.quantization_config(),
        layers=layers,
        source_bytes=_weight_bytes(source),
        quantized_bytes=_weight_bytes(out),
        calibration_sequences=len(sequences),
        calibration_tokens=sum(len(s) for s in sequences),
        seconds=time.monotonic() - started,
    )


def _calibration_ids(calibration: Calibration, tokenizer: Any, window: int, budget: int) -> list[list[int]]:
    """Token-id windows of at most ``window`` tokens, ``budget`` tokens in all (the rest unused)."""
    if window < 1 or budget < 1:
        raise InvalidCalibration("max_sequence_tokens and max_calibration_tokens must be positive")
    kinds = {type(item) is str for item in calibration}
    if len(kinds) > 1:
        raise InvalidCalibration("calibration mixes texts and token-id sequences; pass one kind")
    sequences: list[list[int]] = []
    total = 0
    for number, item in enumerate(calibration):
        if total >= budget:
            break
        if isinstance(item, str):
            ids = list(tokenizer(item, add_special_tokens=False)["input_ids"])
        else:
            try:
                ids = [int(token) for token in item]  # type: ignore[call-overload]  # checked here
            except (TypeError, ValueError):
                raise InvalidCalibration(
                    f"calibration sequence {number} is not a list of token ids"
                ) from None
        for start in range(0, len(ids), window):
            piece = ids[start : start + window][: budget - total]
            if piece:
                sequences.append(piece)
                total += len(piece)
    return sequences


def _weight_bytes(folder: Path) -> int:
    return sum(file.stat().st_size for file in weight_files(folder))


def _describe(config: Any) -> str:
    quant = config.get("quantization_config") or {}
    return f"quant_method {quant.get('quant_method')!r}, {quant.get('bits')} bits"
