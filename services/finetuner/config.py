"""Finetuner settings (``PUYU_*`` environment, e.g. ``PUYU_FINETUNER_DEVICE=cuda``; the launcher:
``PUYU_LAUNCHER=torchrun``, ``PUYU_LAUNCH_NPROCS_PER_NODE=2``, see docs/finetuner.md)."""

from __future__ import annotations

from pydantic import Field

from shared.settings import LaunchSettings


class FinetunerSettings(LaunchSettings):
    finetuner_device: str = Field(
        default="auto", description="cpu | cuda | auto (CUDA when present; under torchrun one GPU per rank)."
    )
    finetuner_num_threads: int | None = Field(
        default=None, ge=1, description="torch CPU threads (per rank); default torch's (torchrun: 1)."
    )
    finetuner_registry_timeout_s: float = Field(
        default=10.0, gt=0, description="Registry GetVersion deadline."
    )
    finetuner_max_deliver: int = Field(default=3, ge=1, description="Attempts before a job is dead-lettered.")
    finetuner_ack_wait_s: float = Field(
        default=60.0, gt=0, description="Ack deadline (kept alive while training)."
    )
