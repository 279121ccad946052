"""Checkpoints: Hugging Face folders (loadable as they are, in the layout of the checkpoint a
continued pretraining started from) + a separate resumable training state.

Layout of a run folder::

    checkpoints/step-<n>/   model.safetensors, config.json, tokenizer files, lineage.json
    state/step-<n>/training_state.pt   optimizer, scheduler, step, RNG, sampler position
    state/latest.json       {"step": n}: written last, so it only ever names a complete pair
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step-{step}"


def state_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "state" / f"step-{step}"


def save_checkpoint(run_dir: Path, step: int, model: Any, tokenizer: Any, lineage: dict[str, Any]) -> Path:
    """Write the HF checkpoint of ``step`` (replacing a partial one left by a crash)."""
    from services.trainer.core.model import save_model

    dest = checkpoint_dir(run_dir, step)
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_model(model, tokenizer, tmp)
    (tmp / "lineage.json").write_text(json.dumps(lineage, indent=2, sort_keys=True, default=str))
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    return dest


def save_training_state(
    run_dir: Path,
    step: int,
    engine_state: dict[str, Any],
    sampler_state: dict[str, int],
    extra: dict[str, Any],
) -> Path:
    """Optimizer + scheduler (from the engine; DeepSpeed's shards sit beside it), sampler, RNG."""
    dest = state_dir(run_dir, step)
    dest.mkdir(parents=True, exist_ok=True)
    state = {
        "step": step,
        **engine_state,
        "sampler": sampler_state,
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        **extra,
    }
    torch.save(state, dest / "training_state.pt.tmp")
    os.replace(dest / "training_state.pt.tmp", dest / "training_state.pt")
    latest = run_dir / "state" / "latest.json"
    previous = json.loads(latest.read_text())["step"] if latest.exists() else None
    latest.with_suffix(".tmp").write_text(json.dumps({"step": step}))
    os.replace(latest.with_suffix(".tmp"), latest)
    if previous is not None and previous != step:  # only the newest optimizer state is kept
        shutil.rmtree(state_dir(run_dir, previous), ignore_errors=True)
    return dest


@dataclass
class ResumePoint:
    step: int
    checkpoint: Path
    state_dir: Path
    state: dict[str, Any]


def latest_resume_point(run_dir: Path) -> ResumePoint | None:
    """The newest complete (checkpoint, state) pair of the run, or None for a fresh start."""
    latest = run_dir / "state" / "latest.json"
    if not latest.exists():
        return None
    step = int(json.loads(latest.read_text())["step"])
    ckpt, state_file = checkpoint_dir(run_dir, step), state_dir(run_dir, step) / "training_state.pt"
    if not (ckpt / "config.json").exists() or not state_file.exists():
        return None
    state = torch.load(state_file, map_location="cpu", weights_only=False)
    return ResumePoint(step=step, checkpoint=ckpt, state_dir=state_file.parent, state=state)


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch_rng"])
    if state.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
