"""Registry events beyond the chain's main arrows: alias moves and manual-approval requests.

Automations (a deploy pipeline, a chat notification, an approval bot) subscribe to these, as MLflow
webhooks and W&B registry automations fire on alias events.
"""

from __future__ import annotations

from pydantic import Field

from contracts.events.envelope import EventPayload, register
from contracts.events.payloads import ModelRef


@register
class ModelAliasChanged(EventPayload):
    """A user alias (anything but ``champion``, which has model.promoted) was set or moved."""

    event_type = "model.alias_changed"
    model: ModelRef = Field(description="The version the alias points at now.")
    alias: str
    previous: ModelRef | None = Field(default=None, description="Where it pointed before; None if new.")
    actor: str
    reason: str = ""


@register
class ModelApprovalRequested(EventPayload):
    """Manual-approval mode: the version passed every gate and waits for a person to promote it."""

    event_type = "model.approval_requested"
    model: ModelRef
    champion: ModelRef | None = None
    reason: str = Field(description="The policy's decision, every check with its numbers.")


__all__ = ["ModelAliasChanged", "ModelApprovalRequested"]
