"""Event contracts: the envelope, the payloads of the chain, and where they travel."""

# Each area's own events (importing registers them).
from contracts.events.dedup import DedupItemRequested
from contracts.events.envelope import EVENT_TYPES, EventEnvelope, EventPayload, InvalidEvent, register
from contracts.events.evaluation import EvaluateShardRequested
from contracts.events.payloads import *  # noqa: F403
from contracts.events.payloads import __all__ as _payload_names  # type: ignore[attr-defined]
from contracts.events.registry import ModelAliasChanged, ModelApprovalRequested
from contracts.events.training import TrainCancelRequested

__all__ = [
    "EVENT_TYPES",
    "DedupItemRequested",
    "EvaluateShardRequested",
    "EventEnvelope",
    "EventPayload",
    "InvalidEvent",
    "ModelAliasChanged",
    "ModelApprovalRequested",
    "TrainCancelRequested",
    "register",
    *_payload_names,
]
