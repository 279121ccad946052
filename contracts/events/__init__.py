"""Event contracts: the envelope, the payloads of the chain, and where they travel."""

from contracts.events.envelope import EVENT_TYPES, EventEnvelope, EventPayload, InvalidEvent, register
from contracts.events.payloads import *  # noqa: F403
from contracts.events.payloads import __all__ as _payload_names  # type: ignore[attr-defined]

__all__ = ["EVENT_TYPES", "EventEnvelope", "EventPayload", "InvalidEvent", "register", *_payload_names]
