"""Job progress and failure, published by any service for any job."""

from __future__ import annotations

from pydantic import Field

from contracts.events.envelope import EventPayload, register


@register
class JobProgress(EventPayload):
    event_type = "job.progress"
    job_id: str
    job_kind: str
    stage: str
    fraction: float = Field(ge=0, le=1)
    message: str = ""
    metrics: dict[str, float] = Field(default_factory=dict)


@register
class JobFailed(EventPayload):
    event_type = "job.failed"
    job_id: str | None = None
    service: str
    source_subject: str = Field(description="The subject the failed message came from.")
    event_id: str | None = None
    error: str
    attempts: int = Field(ge=0)
    dead_lettered: bool = True


__all__ = ["JobProgress", "JobFailed"]
