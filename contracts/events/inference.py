"""Serving: deployment facts, and what an inference worker announces about itself."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from contracts.events.common import ModelRef
from contracts.events.envelope import EventPayload, register


@register
class DeploymentReady(EventPayload):
    event_type = "deployment.ready"
    model: ModelRef
    served_name: str
    instance: str


@register
class DeploymentFailed(EventPayload):
    event_type = "deployment.failed"
    model: ModelRef
    instance: str
    error: str


# What an inference worker announces about itself in the JetStream KV bucket ``puyu_workers`` (key:
# instance). Not an event: the latest value per worker, refreshed every few seconds and gone with the
# bucket's TTL when the worker stops, so a router or ``puyu status`` reads live load without asking
# every worker.
class ServedLoad(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_name: str
    version: int = Field(ge=1)
    names: list[str] = Field(description="Names requests may use: model, model:version, model@alias.")
    state: str = Field(description="ready | draining")
    running: int = Field(ge=0)
    waiting: int = Field(ge=0)
    free_blocks: int = Field(ge=0, description="Free KV-cache blocks.")
    total_blocks: int = Field(ge=0)
    quantization: str | None = Field(
        default=None,
        description="Weight quantisation of the served version (method-int<bits>-g<group size>, e.g. "
        "awq-int4-g128); None: full-precision weights.",
    )
    kv_dtype: str = Field(
        default="", description="How its KV cache stores keys and values: int8, fp8_e4m3, bfloat16 ..."
    )
    kv_capacity_tokens: int = Field(default=0, ge=0, description="Tokens its KV cache holds in all.")


class WorkerAnnouncement(BaseModel):
    model_config = ConfigDict(extra="forbid")

    instance: str
    http_url: str | None = Field(default=None, description="Base URL of its OpenAI-compatible API.")
    grpc_target: str | None = None
    served: list[ServedLoad]
    updated_at: datetime


__all__ = ["DeploymentReady", "DeploymentFailed", "ServedLoad", "WorkerAnnouncement"]
