"""Resumable finetune state: the trained weights (adapter only, or all for 'full'), optimizer,
scheduler, RNG and loss history, in one file written atomically. Under ZeRO the weights, optimizer
and scheduler are DeepSpeed's own checkpoint beside it, which the file names (see ``engine.py``).

The fingerprint (spec + dataset digest + base) guards against resuming a different job in the
same folder: a mismatch starts afresh, with a warning.

With several ranks (data parallel) every rank calls ``save`` (DeepSpeed writes its shards
collectively); rank 0 alone writes the state file, which every rank reads back on resume: the ranks
hold the same weights, optimizer state and RNG stream, so rank 0's are everyone's.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from shared.distributed import barrier, world

log = logging.getLogger(__name__)
STATE_FILE = "finetune_state.pt"


def save(state_dir: Path, fingerprint: str, step: int, engine: Any, **extra: Any) -> Path:
    state_dir.mkdir(parents=True, exist_ok=True)
    engine_state = engine.state(state_dir, step)  # every rank: DeepSpeed saves collectively
    path = state_dir / STATE_FILE
    if world().main:
        blob = {
            "fingerprint": fingerprint,
            "step": step,
            **engine_state,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            **extra,
        }
        torch.save(blob, path.with_suffix(".tmp"))
        os.replace(path.with_suffix(".tmp"), path)
    barrier()  # the file names the new step before anyone drops older DeepSpeed tags
    engine.saved(state_dir, step)
    return path


def load(state_dir: Path, fingerprint: str) -> dict[str, Any] | None:
    path = state_dir / STATE_FILE
    if not path.is_file():
        return None
    blob: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=False)
    if blob.get("fingerprint") != fingerprint:
        log.warning("%s belongs to a different job (spec, data or base changed): starting afresh", path)
        return None
    return blob


def restore(blob: dict[str, Any], engine: Any, state_dir: Path) -> None:
    engine.restore(blob, state_dir)
    torch.set_rng_state(blob["torch_rng"])
    if blob.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(blob["cuda_rng"])
