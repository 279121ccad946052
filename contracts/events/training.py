"""Pretraining and finetuning: the job requests, cancellation, and the fact that a checkpoint is ready."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from contracts.events.common import ArtifactRef, DatasetRef, ModelRef, StrictModel
from contracts.events.envelope import EventPayload, register
from contracts.events.specs import FinetuneSpec, QuantizeSpec, TrainSpec


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
class QuantizeRequested(EventPayload):
    """Quantise a registered version's weights into a new version (run by the finetuner)."""

    event_type = "quantize.requested"
    kind = "job"
    job_id: str
    base: ModelRef = Field(description="The version to quantise: the new version's parent.")
    base_artifact: ArtifactRef | None = Field(
        default=None, description="Resolved through the registry when absent."
    )
    calibration_uri: str | None = Field(
        default=None,
        description="Calibration text for awq and gptq: a dataset manifest or folder (a corpus-ingest or "
        "dedup output), or a .txt / .jsonl file, under the store or the data roots.",
    )
    output_model_name: str | None = Field(default=None, description="Defaults to the base model's name.")
    spec: QuantizeSpec = Field(default_factory=QuantizeSpec)


class QuantizationLineage(StrictModel):
    """How a quantised checkpoint was made from its parent (``CheckpointReady.parent``)."""

    method: Literal["rtn", "awq", "gptq"]
    bits: int = Field(ge=1)
    group_size: int = Field(ge=-1)
    sym: bool = False
    desc_act: bool = False
    quant_method: str = Field(
        description="The folder's layout: quantization_config.quant_method (awq | gptq)."
    )
    calibration_uri: str | None = None
    calibration_tokens: int = Field(default=0, ge=0)


@register
class CheckpointReady(EventPayload):
    event_type = "checkpoint.ready"
    job_id: str
    run_id: str
    model_name: str
    step: int = Field(ge=0)
    final: bool = True
    kind_of_run: Literal["pretrain", "finetune", "quantize"] = "pretrain"
    method: str = Field(default="full", description="full | lora | ... | rtn | awq | gptq")
    checkpoint: ArtifactRef
    adapter: ArtifactRef | None = None
    parent: ModelRef | None = None
    datasets: list[DatasetRef] = Field(default_factory=list)
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)
    quantization: QuantizationLineage | None = Field(
        default=None, description="kind_of_run quantize: the method and grid, the parent is ``parent``."
    )


@register
class TrainCancelRequested(EventPayload):
    """Stop a train job: a fact fanned out to every trainer replica; the one running it stops
    at the next step boundary (its state is kept), a queued one is skipped when it arrives."""

    event_type = "train.cancel_requested"
    job_id: str
    reason: str = Field(default="cancelled by request")


__all__ = [
    "TrainRequested",
    "FinetuneRequested",
    "QuantizeRequested",
    "QuantizationLineage",
    "CheckpointReady",
    "TrainCancelRequested",
]
