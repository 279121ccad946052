"""Trainer settings (``PUYU_*`` environment, e.g. ``PUYU_TRAINER_DEVICE=cuda``)."""

from __future__ import annotations

from pydantic import Field

from shared.settings import CommonSettings


class TrainerSettings(CommonSettings):
    trainer_device: str = Field(default="auto", description="auto | cpu | cuda | cuda:N")
    trainer_progress_interval: float = Field(
        default=1.0, gt=0, description="Seconds between progress events."
    )
    trainer_max_deliver: int = Field(
        default=3, ge=1, description="Attempts of a train job before dead letter."
    )
