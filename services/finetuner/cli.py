"""Standalone commands: ``puyu finetune --config FILE``, ``puyu finetune check-data FILE``,
``puyu finetune merge`` and ``puyu quantize``.

CONFIG (YAML or JSON)::

    base_model: path/to/hf-model-folder     # llama, mistral, qwen2/3, qwen2_moe, mixtral, internlm2/3
    dataset: path/to/data.jsonl             # openai | alpaca | xtuner | text | preference records
    out_dir: runs/my-lora                   # gets adapter/ and model/ (merged), each with lineage.json
    device: auto                            # cpu | cuda | auto
    spec: {method: lora, max_steps: 60, packing: true, lora: {r: 8, alpha: 16}}  # contracts FinetuneSpec

model/ is saved in the base's own layout (an InternLM2 base gives an InternLM2 folder). LoRA target
modules are named as in transformers' Llama for every dense family (InternLM2's wqkv/wo/w1/w2/w3
are accepted and mapped); see ``core/methods.py``.

Running the same config again resumes from ``out_dir/state`` (saved every ``checkpoint_interval``
steps and when a run is interrupted).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from contracts.events import FinetuneSpec, QuantizeSpec
from services.finetuner.core import (
    DataError,
    check_base,
    check_data,
    load_dataset,
    merge_adapter,
    run_finetune,
    run_quantize,
)
from shared.errors import Refusal
from shared.hf_models import UnsupportedModel, load_tokenizer


class FinetuneConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base_model: Path
    dataset: Path
    out_dir: Path
    device: str = "auto"
    num_threads: int | None = Field(default=None, ge=1)
    spec: FinetuneSpec = Field(default_factory=FinetuneSpec)


def load_config(path: Path) -> FinetuneConfig:
    """Parse the config; relative paths are relative to the config file's folder."""
    raw: Any = yaml.safe_load(path.read_text())  # YAML is a superset of JSON
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping with base_model, dataset, out_dir, spec")
    cfg = FinetuneConfig.model_validate(raw)
    root = path.parent
    for name in ("base_model", "dataset", "out_dir"):
        value: Path = getattr(cfg, name)
        if not value.is_absolute():
            setattr(cfg, name, root / value)
    return cfg


def dataset_summary(path: str | Path, data_format: str = "auto") -> tuple[str, int]:
    data = load_dataset(path, data_format)
    return data.format, len(data.records)


def _progress(stage: str, fraction: float, message: str = "", **metrics: float) -> None:
    extra = " ".join(f"{k}={v:.4f}" for k, v in metrics.items())
    print(f"[{stage} {fraction:6.1%}] {message} {extra}".rstrip(), file=sys.stderr, flush=True)


def finetune_cmd(config_path: str | Path) -> int:
    """Run one finetune from a config file; prints the outcome as JSON. Returns an exit code."""
    path = Path(config_path)
    try:
        cfg = load_config(path)
        outcome = run_finetune(
            cfg.base_model,
            cfg.dataset,
            cfg.spec,
            cfg.out_dir,
            dataset_uri=str(cfg.dataset),
            device=cfg.device,
            num_threads=cfg.num_threads,
            progress=_progress,
        )
    except DataError as exc:
        print(f"error: dataset has {len(exc.errors)} problem(s):", file=sys.stderr)
        for err in exc.errors:
            print(f"  {err}", file=sys.stderr)
        return 2
    except (OSError, ValueError, ValidationError) as exc:  # the core's refusals are ValueErrors too
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        json.dumps(
            {
                "adapter": str(outcome.adapter_dir) if outcome.adapter_dir else None,
                "model": str(outcome.model_dir),
                "steps": outcome.steps,
                "metrics": outcome.metrics,
            },
            indent=2,
        )
    )
    return 0


MAX_SHOWN = 20


def check_data_cmd(path: str | Path, data_format: str = "auto", method: str | None = None) -> int:
    """Validate a data file: 0 when usable, 1 with one line per problem (first bad record first)."""
    errors = check_data(path, data_format, method)
    for err in errors[:MAX_SHOWN]:
        print(err)
    if errors:
        more = f" (first {MAX_SHOWN} shown)" if len(errors) > MAX_SHOWN else ""
        print(f"{path}: {len(errors)} problem(s){more}", file=sys.stderr)
        return 1
    fmt, n = dataset_summary(path, data_format)
    print(f"{path}: ok ({n} {fmt} records)")
    return 0


def merge_cmd(base: str | Path, adapter: str | Path, out: str | Path) -> int:
    """Fold a PEFT adapter into its base model and save the result in the base's layout."""
    try:
        check_base(Path(base))
        if not (Path(adapter) / "adapter_config.json").is_file():
            raise ValueError(f"{adapter} is not a PEFT adapter folder (no adapter_config.json)")
        tokenizer = load_tokenizer(adapter)
        merge_adapter(Path(base), Path(adapter), Path(out), tokenizer)
    except (OSError, ValueError, UnsupportedModel) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(out)
    return 0


def quantize_cmd(
    model: str | Path,
    out: str | Path,
    spec: QuantizeSpec,
    calibration: str | None = None,
    *,
    overwrite: bool = False,
    num_threads: int | None = None,
) -> int:
    """Quantise a model folder into OUT (Hugging Face layout with ``quantization_config``); prints the
    report as JSON. Refusals (family, layer, group size, calibration) exit 2 naming the problem."""
    try:
        outcome = run_quantize(
            Path(model),
            Path(out),
            spec,
            calibration,
            num_threads=num_threads,
            progress=_progress,
            overwrite=overwrite,
        )
    except (OSError, ValueError, Refusal) as exc:  # shared.quantization's refusals are Refusals
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        json.dumps(
            {
                "model": str(outcome.model_dir),
                "quantization": outcome.lineage.model_dump(),
                "metrics": outcome.metrics,
            },
            indent=2,
        )
    )
    return 0
