"""Subject and stream names: the one place that maps payload types to the wire."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from contracts.events.envelope import EventPayload

# Facts, fanned out: limits retention, one durable consumer per interested service.
EVENTS_STREAM = "PUYU_EVENTS"
EVENTS_PREFIX = "puyu.events"
# Job requests: work-queue retention, shared by the replicas of the one service that does them.
JOBS_STREAM = "PUYU_JOBS"
JOBS_PREFIX = "puyu.jobs"
# Messages whose handler failed max_deliver times, or that can never succeed (malformed).
DLQ_STREAM = "PUYU_DLQ"
DLQ_PREFIX = "puyu.dlq"

# Key-value buckets.
JOBS_BUCKET = "puyu_jobs"  # job id -> JobStatus, the state `puyu status` and gRPC Jobs read
PROCESSED_BUCKET = "puyu_processed"  # service + event id -> processed marker (idempotent consumers)
WORKERS_BUCKET = "puyu_workers"  # inference worker announcements


def subject_for(cls: type[EventPayload]) -> str:
    prefix = JOBS_PREFIX if cls.kind == "job" else EVENTS_PREFIX
    return f"{prefix}.{cls.event_type}"


def stream_for(cls: type[EventPayload]) -> str:
    return JOBS_STREAM if cls.kind == "job" else EVENTS_STREAM


def dlq_subject(subject: str) -> str:
    return f"{DLQ_PREFIX}.{subject}"
