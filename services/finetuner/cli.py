"""Standalone commands: ``puyu finetune CONFIG`` and ``puyu finetune check-data FILE``.

CONFIG (YAML or JSON)::

    base_model: path/to/hf-model-folder     # config.json + weights + tokenizer
    dataset: path/to/chat.jsonl             # OpenAI-messages JSONL
    out_dir: runs/my-lora                   # gets adapter/ and model/ (merged), each with lineage.json
    device: auto                            # cpu | cuda | auto
    spec: {method: lora, max_steps: 60, lora: {r: 8, alpha: 16}}   # contracts FinetuneSpec
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from contracts.events import FinetuneSpec
from services.finetuner.core import run_finetune
from services.finetuner.data import DataError, check_data
from services.finetuner.methods import UnsupportedRequest, check_method


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
    check_method(str((raw.get("spec") or {}).get("method", "lora")))
    cfg = FinetuneConfig.model_validate(raw)
    root = path.parent
    for name in ("base_model", "dataset", "out_dir"):
        value: Path = getattr(cfg, name)
        if not value.is_absolute():
            setattr(cfg, name, root / value)
    return cfg


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
    except (OSError, ValueError, UnsupportedRequest, ValidationError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        json.dumps(
            {
                "adapter": str(outcome.adapter_dir),
                "model": str(outcome.model_dir),
                "steps": outcome.steps,
                "metrics": outcome.metrics,
            },
            indent=2,
        )
    )
    return 0


def check_data_cmd(path: str | Path) -> int:
    """Validate a chat JSONL file: 0 when usable, 1 with one line per problem otherwise."""
    errors = check_data(path)
    for err in errors:
        print(err)
    if errors:
        print(f"{path}: {len(errors)} problem(s)", file=sys.stderr)
        return 1
    print(f"{path}: ok")
    return 0
