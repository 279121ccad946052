"""Facts are accepted only from the service that owns them (trainer and finetuner: checkpoint.ready;
evaluator: evaluation.completed; model-registry: model.*; the serving processes: deployment.*).

Defence in depth only: an envelope's ``source`` is written by its publisher and is as forgeable as
the rest of the message. What keeps other services from publishing a fact at all is their NATS
permissions (``shared.bus.permissions``, from which the owners here are read). This check turns a
forged event that got past them into a refusal with a clear dead-letter reason, before any effect
and before its id is marked processed (so a forgery cannot use up the id of the real fact).
"""

from __future__ import annotations

from contracts.events import EventEnvelope, EventPayload
from shared.bus.permissions import publishers_of
from shared.errors import Refusal


class ForeignSource(Refusal):
    """A fact whose envelope names a source that does not own it."""


def require_owner(envelope: EventEnvelope, cls: type[EventPayload]) -> None:
    owners = publishers_of(cls)
    if envelope.source not in owners:
        raise ForeignSource(
            f"{envelope.type} {envelope.id} comes from {envelope.source!r}; "
            f"only {', '.join(owners)} may publish it"
        )
