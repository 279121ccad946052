"""Pretraining and finetuning: the job requests, cancellation, and the fact that a checkpoint is ready."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from contracts.events.common import ArtifactRef, DatasetRef, ModelRef
from contracts.events.envelope import EventPayload, register
from contracts.events.specs import FinetuneSpec, TrainSpec


@register
class TrainRequested(EventPayload):
    event_type = "train.requested"
    kind = "job"
    job_id: str
    datasets: list[DatasetRef] = Field(min_length=1)
    spec: TrainSpec = Field(default_factory=TrainSpec)


@register
class FinetuneRequested(EventPayload):
    event_type = "finetune.requested"
    kind = "job"
    job_id: str
    base: ModelRef
    base_artifact: ArtifactRef | None = Field(
        default=None, description="Resolved through the registry when absent."
    )
    dataset_uri: str = Field(description="OpenAI-messages JSONL of chat examples.")
    output_model_name: str | None = Field(default=None, description="Defaults to the base model's name.")
    spec: FinetuneSpec = Field(default_factory=FinetuneSpec)


@register
class CheckpointReady(EventPayload):
    event_type = "checkpoint.ready"
    job_id: str
    run_id: str
    model_name: str
    step: int = Field(ge=0)
    final: bool = True
    kind_of_run: Literal["pretrain", "finetune"] = "pretrain"
    method: str = Field(default="full", description="full | lora | ...")
    checkpoint: ArtifactRef
    adapter: ArtifactRef | None = None
    parent: ModelRef | None = None
    datasets: list[DatasetRef] = Field(default_factory=list)
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)


@register
class TrainCancelRequested(EventPayload):
    """Stop a train job: a fact fanned out to every trainer replica; the one running it stops
    at the next step boundary (its state is kept), a queued one is skipped when it arrives."""

    event_type = "train.cancel_requested"
    job_id: str
    reason: str = Field(default="cancelled by request")


__all__ = ["TrainRequested", "FinetuneRequested", "CheckpointReady", "TrainCancelRequested"]
