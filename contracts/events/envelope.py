"""One envelope for every event on the bus.

The payload is a pydantic model registered under the event's ``type``; the envelope carries the
identity (deterministic where the event is a fact), tracing ids and the schema version.
"""

from __future__ import annotations

import builtins
import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class EventPayload(BaseModel):
    """Base class of every payload. Subclasses set ``event_type`` and ``schema_version``."""

    model_config = ConfigDict(extra="forbid")

    event_type: ClassVar[str]
    schema_version: ClassVar[int] = 1
    # "event": a fact fanned out to every interested service; "job": a work item for one service.
    kind: ClassVar[str] = "event"

    @classmethod
    def subject(cls) -> str:
        from contracts.events.subjects import subject_for

        return subject_for(cls)


P = TypeVar("P", bound=EventPayload)

EVENT_TYPES: dict[str, type[EventPayload]] = {}


def register(cls: type[P]) -> type[P]:
    """Class decorator: make a payload type known to the envelope parser."""
    if cls.event_type in EVENT_TYPES:
        raise ValueError(f"event type {cls.event_type!r} registered twice")
    EVENT_TYPES[cls.event_type] = cls
    return cls


class InvalidEvent(ValueError):
    """A message on the bus that is not a valid puyu event (poison: it will not succeed on retry)."""


class EventEnvelope(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(
        description="Unique id; deterministic where the event is a fact (e.g. ckpt:{run}:{step})."
    )
    type: str
    schema_version: int = 1
    time: datetime = Field(default_factory=lambda: datetime.now(UTC))
    source: str = Field(description="The service that published the event.")
    correlation_id: str = Field(description="One per user request, carried across every hop.")
    causation_id: str | None = Field(default=None, description="Id of the event that caused this one.")
    payload: dict[str, Any]

    @classmethod
    def wrap(
        cls,
        payload: EventPayload,
        *,
        source: str,
        correlation_id: str | None = None,
        causation: EventEnvelope | None = None,
        event_id: str | None = None,
    ) -> EventEnvelope:
        if correlation_id is None:
            correlation_id = causation.correlation_id if causation else uuid.uuid4().hex
        return cls(
            id=event_id or f"{payload.event_type}:{uuid.uuid4().hex}",
            type=payload.event_type,
            schema_version=payload.schema_version,
            source=source,
            correlation_id=correlation_id,
            causation_id=causation.id if causation else None,
            payload=payload.model_dump(mode="json"),
        )

    def parsed(self) -> EventPayload:
        """The payload as its registered model; raises InvalidEvent naming the problem."""
        cls = EVENT_TYPES.get(self.type)
        if cls is None:
            raise InvalidEvent(f"unknown event type {self.type!r}")
        if self.schema_version != cls.schema_version:
            raise InvalidEvent(
                f"{self.type}: schema version {self.schema_version} is not supported "
                f"(this build reads version {cls.schema_version})"
            )
        try:
            return cls.model_validate(self.payload)
        except ValidationError as exc:
            raise InvalidEvent(f"{self.type}: invalid payload: {_summarise(exc)}") from exc

    def payload_as(self, cls: builtins.type[P]) -> P:
        parsed = self.parsed()
        if not isinstance(parsed, cls):
            raise InvalidEvent(f"expected a {cls.event_type} event, got {self.type}")
        return parsed

    @classmethod
    def from_bytes(cls, data: bytes) -> EventEnvelope:
        try:
            return cls.model_validate_json(data)
        except ValidationError as exc:
            raise InvalidEvent(f"malformed event envelope: {_summarise(exc)}") from exc

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()


def _summarise(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        parts.append(f"{loc}: {err['msg']}")
    more = f" (+{exc.error_count() - 5} more)" if exc.error_count() > 5 else ""
    return "; ".join(parts) + more
