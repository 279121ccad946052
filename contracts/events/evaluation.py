"""Evaluation sharding events (issue 6): a run split into shards that evaluator replicas take."""

from __future__ import annotations

from pydantic import Field

from contracts.events.envelope import EventPayload, register
from contracts.events.payloads import ArtifactRef, ModelRef


@register
class EvaluateShardRequested(EventPayload):
    """Score samples [start, stop) of one task for one model version: a work item any evaluator
    replica takes. Its details land at ``result_uri`` (a shard already there is not redone)."""

    event_type = "evaluate.shard.requested"
    kind = "job"
    job_id: str = Field(description="The evaluation job this shard belongs to.")
    model: ModelRef
    artifact: ArtifactRef
    task: str
    task_version: str = Field(
        description="version_hash of the task: a replica with another definition refuses."
    )
    start: int = Field(ge=0)
    stop: int = Field(ge=1)
    limit: int | None = Field(default=None, ge=1)
    result_uri: str


__all__ = ["EvaluateShardRequested"]
