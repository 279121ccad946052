"""Registry facts: a version registered, promoted or rejected, an alias moved, an approval asked for.

Automations (a deploy pipeline, a chat notification, an approval bot) subscribe to these, as MLflow
webhooks and W&B registry automations fire on alias events.
"""

from __future__ import annotations

from pydantic import Field

from contracts.events.common import ArtifactRef, ModelRef
from contracts.events.envelope import EventPayload, register


@register
class ModelRegistered(EventPayload):
    event_type = "model.registered"
    model: ModelRef
    artifact: ArtifactRef
    run_id: str
    parent: ModelRef | None = None
    tasks: list[str] = Field(default_factory=lambda: ["perplexity", "demo_facts"])


@register
class ModelPromoted(EventPayload):
    event_type = "model.promoted"
    model: ModelRef
    alias: str = "champion"
    artifact: ArtifactRef
    previous: ModelRef | None = None
    reason: str


@register
class ModelRejected(EventPayload):
    event_type = "model.rejected"
    model: ModelRef
    champion: ModelRef | None = None
    reason: str


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


__all__ = ["ModelRegistered", "ModelPromoted", "ModelRejected", "ModelAliasChanged", "ModelApprovalRequested"]
