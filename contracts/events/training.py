"""Training control events (issue 4): cancelling a pretraining job."""

from __future__ import annotations

from pydantic import Field

from contracts.events.envelope import EventPayload, register


@register
class TrainCancelRequested(EventPayload):
    """Stop a train job: a fact fanned out to every trainer replica; the one running it stops
    at the next step boundary (its state is kept), a queued one is skipped when it arrives."""

    event_type = "train.cancel_requested"
    job_id: str
    reason: str = Field(default="cancelled by request")


__all__ = ["TrainCancelRequested"]
