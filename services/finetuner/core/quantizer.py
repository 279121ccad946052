"""Quantisation of a registered version: its folder in, a quantised folder (a new version) out.

It lives in the finetuner because it is the same kind of job: a registered version transformed into
a new version whose lineage names it (LMDeploy's ``lite`` sits beside XTuner the same way). The work
itself is ``shared.quantization.quantize_folder``; this core checks the request first, cheapest
first, so that one that can never succeed costs no model load: the spec, the calibration source being
named, the folder's family and dimensions (its ``config.json``), then the calibration windows against
the vocabulary and the method's minimum. ``run_quantize`` is what ``puyu quantize`` calls;
``Quantizer`` is what the service runs for ``quantize.requested`` (inputs from the artifact store and
the data roots, the output stored back).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contracts.events import ArtifactRef, ModelRef, QuantizationLineage, QuantizeSpec
from services.finetuner.core.calibration import calibration_windows
from services.finetuner.core.refusals import InvalidInput
from shared.artifacts import ArtifactStore, DigestMismatch, digest_of
from shared.hf_models import ModelFormat, detect_format, load_tokenizer
from shared.quantization import (
    SUPPORTED_SOURCE_TYPES,
    InvalidCalibration,
    QuantSpec,
    UnsupportedArchitecture,
    quantize_folder,
)
from shared.quantization.checks import check_calibration, check_config
from shared.read_roots import ReadRoots

Progress = Callable[..., None]  # progress(stage, fraction, message, **metrics)
MAX_CALIBRATION_TOKENS = 1 << 18  # 512 windows of 512 tokens: AWQ/GPTQ time and memory stay bounded


def quant_spec(spec: QuantizeSpec) -> QuantSpec:
    """The library's spec; contradictions (``sym`` with awq, a zero group size) are refused there."""
    return QuantSpec(
        method=spec.method, bits=spec.bits, group_size=spec.group_size, sym=spec.sym, desc_act=spec.desc_act
    )


def check_spec(spec: QuantizeSpec, calibration: str | Path | None) -> QuantSpec:
    """What the request alone can be refused for (also the gRPC submit check)."""
    qspec = quant_spec(spec)
    if qspec.needs_calibration and not calibration:
        raise InvalidCalibration(
            f"{spec.method} needs calibration text: name a dataset or a text file (--calib, calibration_uri)"
        )
    tokens = spec.calibration_samples * spec.calibration_seq_len
    if qspec.needs_calibration and tokens > MAX_CALIBRATION_TOKENS:
        raise InvalidCalibration(
            f"calibration of {spec.calibration_samples} x {spec.calibration_seq_len} = {tokens} tokens "
            f"exceeds the limit of {MAX_CALIBRATION_TOKENS}"
        )
    return qspec


def check_model_folder(model_dir: Path, qspec: QuantSpec) -> ModelFormat:
    """The folder's family and every projection's shape against the grid, from ``config.json`` only."""
    fmt = detect_format(model_dir)  # UnsupportedModel: not a model folder, or a family puyu cannot open
    quant = fmt.source_config.get("quantization_config")
    if quant is not None:
        method = quant.get("quant_method") if isinstance(quant, dict) else quant
        raise UnsupportedArchitecture(f"{model_dir} is quantised already (quant_method {method!r})")
    if fmt.model_type not in SUPPORTED_SOURCE_TYPES:
        raise UnsupportedArchitecture(
            f"model_type {fmt.model_type!r} cannot be quantised; supported: {', '.join(SUPPORTED_SOURCE_TYPES)}"
        )
    check_config(fmt.source_config, qspec)
    return fmt


@dataclass(frozen=True)
class QuantizeOutcome:
    model_dir: Path
    lineage: QuantizationLineage
    metrics: dict[str, float]
    report: dict[str, Any]  # shared.quantization's QuantizeReport, as JSON


def run_quantize(
    model_dir: Path,
    out_dir: Path,
    spec: QuantizeSpec,
    calibration: str | Path | None = None,
    *,
    parent: dict[str, Any] | None = None,
    store: ArtifactStore | None = None,
    read_roots: ReadRoots | None = None,
    num_threads: int | None = None,
    progress: Progress | None = None,
    overwrite: bool = False,
) -> QuantizeOutcome:
    """Quantise ``model_dir`` into ``out_dir``; every refusal comes before the model loads.

    ``calibration``: a dataset manifest or folder, or a text or records file (awq and gptq; rtn
    ignores it). ``parent``: what ``lineage.json`` names as the source (a registry version and its
    artifact, or a path). ``read_roots``: where a service may read calibration data from.
    ``overwrite``: replace a non-empty ``out_dir`` (else refused).
    """
    qspec = check_spec(spec, calibration)
    fmt = check_model_folder(model_dir, qspec)
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise InvalidInput(f"output folder {out_dir} exists and is not empty")
    windows: list[list[int]] = []
    source = str(calibration) if calibration and qspec.needs_calibration else None
    if source is not None:
        tokenizer = load_tokenizer(model_dir)
        windows = calibration_windows(
            source,
            tokenizer,
            samples=spec.calibration_samples,
            seq_len=spec.calibration_seq_len,
            store=store,
            read_roots=read_roots,
        )
        check_calibration(windows, qspec, int(fmt.source_config.get("vocab_size") or len(tokenizer)))

    import torch

    if num_threads:
        torch.set_num_threads(num_threads)
    report = quantize_folder(
        model_dir,
        out_dir,
        qspec,
        windows,
        progress,
        max_sequence_tokens=spec.calibration_seq_len,
        max_calibration_tokens=max(1, spec.calibration_samples * spec.calibration_seq_len),
        overwrite=True,
    )
    lineage = QuantizationLineage(
        method=spec.method,
        bits=spec.bits,
        group_size=spec.group_size,
        sym=spec.sym,
        desc_act=spec.desc_act,
        quant_method=str(report.quantization_config.get("quant_method", "")),
        calibration_uri=source,
        calibration_tokens=report.calibration_tokens,
    )
    summary = report.to_dict()
    (out_dir / "lineage.json").write_text(
        json.dumps(
            {
                "kind": "quantize",
                "parent": parent or {"path": str(model_dir)},
                "quantization": lineage.model_dump(),
            },
            indent=2,
            sort_keys=True,
        )
        + "\n",
        encoding="utf-8",
    )
    metrics = {
        "source_bytes": float(report.source_bytes),
        "quantized_bytes": float(report.quantized_bytes),
        "compression": float(report.compression),
        "calibration_tokens": float(report.calibration_tokens),
        "quantized_layers": float(len(report.layers)),
        "seconds": float(report.seconds),
    }
    return QuantizeOutcome(out_dir, lineage, metrics, summary)


def run_id_for(job_id: str) -> str:
    # The job board's key alphabet ([-_=.a-zA-Z0-9]): the run id reads the same there.
    return "qz-" + "".join(c if c.isalnum() or c in "-_=." else "_" for c in job_id)


@dataclass(frozen=True)
class QuantizeResult:
    run_id: str
    model: ArtifactRef
    lineage: QuantizationLineage
    metrics: dict[str, float]
    report: dict[str, Any]


class Quantizer:
    """The service's quantiser: the base from the artifact store (its digest checked), calibration
    from the store or the data roots, the quantised folder stored as ``runs/{run_id}/model``."""

    def __init__(
        self, store: ArtifactStore, num_threads: int | None = None, read_roots: ReadRoots | None = None
    ) -> None:
        self.store, self.num_threads = store, num_threads
        self.read_roots = read_roots or ReadRoots([store.root_uri])

    def quantize(
        self,
        job_id: str,
        spec: QuantizeSpec,
        *,
        base: ModelRef,
        base_artifact: ArtifactRef,
        calibration_uri: str | None,
        progress: Progress | None = None,
    ) -> QuantizeResult:
        """Quantise the base version; the output folder and key derive from the job id, so a
        redelivered request overwrites the same run."""
        check_spec(spec, calibration_uri)
        self.read_roots.require(base_artifact.uri, "base model")
        if calibration_uri:
            self.read_roots.require(calibration_uri, "calibration data")
        base_dir = self._fetch(base_artifact)
        run_id = run_id_for(job_id)
        outcome = run_quantize(
            base_dir,
            self.store.local_staging(f"runs/{run_id}/model"),
            spec,
            calibration_uri,
            parent={"model_name": base.model_name, "version": base.version, **base_artifact.model_dump()},
            store=self.store,
            read_roots=self.read_roots,
            num_threads=self.num_threads,
            progress=progress,
            overwrite=True,
        )
        model = self.store.put_dir(outcome.model_dir, f"runs/{run_id}/model")
        return QuantizeResult(run_id, model, outcome.lineage, outcome.metrics, outcome.report)

    def _fetch(self, ref: ArtifactRef) -> Path:
        """The base folder, refused when its contents are not the ones its digest names: a version
        altered after registration must not be laundered into a new, freshly digested one."""
        try:
            path = self.store.fetch(ref.uri)
        except FileNotFoundError as exc:
            raise InvalidInput(str(exc)) from exc
        if ref.sha256 and digest_of(path) != ref.sha256:
            raise DigestMismatch(f"base model {ref.uri} does not match its sha256 {ref.sha256}")
        return path
