"""Resumable finetune state: the trained weights (adapter only, or all for 'full'), optimizer,
scheduler, RNG and loss history, in one file written atomically. Under ZeRO the weights, optimizer
and scheduler are DeepSpeed's own checkpoint beside it, which the file names (see ``engine.py``).

The fingerprint (spec + dataset digest + base) guards against resuming a different job in the
same folder: a mismatch starts afresh, with a warning.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)
STATE_FILE = "finetune_state.pt"


def save(state_dir: Path, fingerprint: str, step: int, engine: Any, **extra: Any) -> Path:
    state_dir.mkdir(parents=True, exist_ok=True)
    blob = {
        "fingerprint": fingerprint,
        "step": step,
        **engine.state(state_dir, step),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        **extra,
    }
    path = state_dir / STATE_FILE
    torch.save(blob, path.with_suffix(".tmp"))
    os.replace(path.with_suffix(".tmp"), path)
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
