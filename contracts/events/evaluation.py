"""Evaluation: the job request, its shards (work items any evaluator replica takes), and the results."""

from __future__ import annotations

from pydantic import Field

from contracts.events.common import ArtifactRef, ModelRef, StrictModel
from contracts.events.envelope import EventPayload, register


@register
class EvaluateRequested(EventPayload):
    event_type = "evaluate.requested"
    kind = "job"
    job_id: str
    model: ModelRef
    artifact: ArtifactRef
    tasks: list[str] = Field(default_factory=lambda: ["perplexity", "demo_facts"])
    champion: ModelRef | None = Field(
        default=None,
        description="Whom pairwise tasks compare against; None: the registry's champion at the time.",
    )
    champion_artifact: ArtifactRef | None = None


STDERR_SUFFIX = "_stderr"


class TaskResult(StrictModel):
    task: str
    metrics: dict[str, float] = Field(
        description="Metric values; `<metric>_stderr` is a metric's standard error (binomial for 0/1 "
        "scores, the mean's otherwise, bootstrap for perplexity), as lm-evaluation-harness names them. "
        "A pairwise task's `win_rate_lower` / `win_rate_upper` are its 95% Wilson interval."
    )
    primary_metric: str
    higher_is_better: bool = True
    version_hash: str = Field(
        description="Hash of the task's prompt and config, extended by the chat template, judge and "
        "opponent where they decided the answers: equal hashes mean comparable numbers."
    )
    num_samples: int = Field(ge=0)
    opponent: ModelRef | None = Field(
        default=None, description="Pairwise tasks: the version the candidate was compared with."
    )


@register
class EvaluationCompleted(EventPayload):
    event_type = "evaluation.completed"
    model: ModelRef
    results: list[TaskResult]
    details_uri: str | None = None
    failed: dict[str, str] = Field(
        default_factory=dict,
        description="Tasks that failed (e.g. their judge was unreachable), with the reason; absent from results.",
    )


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


__all__ = [
    "STDERR_SUFFIX",
    "EvaluateRequested",
    "TaskResult",
    "EvaluationCompleted",
    "EvaluateShardRequested",
]
