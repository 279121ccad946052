"""The event bus (FastStream on NATS JetStream) with at-least-once delivery done right."""

from shared.bus.bus import Bus, HandlerContext, JobRejected
from shared.bus.jobs import JobBoard, JobStatus
from shared.bus.lifecycle import JobRun

__all__ = ["Bus", "HandlerContext", "JobBoard", "JobRejected", "JobRun", "JobStatus"]
