"""Trainer settings (``PUYU_*`` environment, e.g. ``PUYU_TRAINER_DEVICE=cuda``; the launcher:
``PUYU_LAUNCHER=torchrun``, ``PUYU_LAUNCH_NPROCS_PER_NODE=2``, see docs/trainer.md)."""

from __future__ import annotations

from pydantic import Field

from shared.settings import LaunchSettings


class TrainerSettings(LaunchSettings):
    trainer_device: str = Field(default="auto", description="auto | cpu | cuda | cuda:N")
    trainer_progress_interval: float = Field(
        default=1.0, gt=0, description="Seconds between progress events."
    )
    trainer_max_deliver: int = Field(
        default=3, ge=1, description="Attempts of a train job before dead letter."
    )
