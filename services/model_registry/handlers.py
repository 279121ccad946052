"""Bus adapters: checkpoint.ready → register; evaluation.completed → policy; deployment.* → record.

These events are facts, not jobs: there is no job on the board to mark. Each is taken only from the
service that owns it (``shared.provenance``). A core refusal (unknown model or version, an artifact
outside the artifact store, invalid input) escapes as a ``Refusal`` and the bus rejects the event without
retries; the outbox relay is woken by the core itself after each commit that wrote events.
"""

from __future__ import annotations

import asyncio

from contracts.events import CheckpointReady, DeploymentFailed, DeploymentReady, EvaluationCompleted
from services.model_registry.config import RegistrySettings
from services.model_registry.core.registry import Registry
from shared.bus import Bus, HandlerContext
from shared.provenance import require_owner


def register_handlers(bus: Bus, core: Registry, settings: RegistrySettings) -> None:
    # Idempotent twice over: the bus's KV marker skips cheap redeliveries; the processed_events row,
    # committed with the effect, is the one that holds when the process dies between the two. Both
    # key on ctx.event_key (type + sealed message id), not the envelope id: another service could
    # send its own event under the id of a real fact first and have the fact skipped here.

    @bus.handle(CheckpointReady, idempotent=True)
    async def on_checkpoint(ctx: HandlerContext[CheckpointReady]) -> None:
        require_owner(ctx.envelope, CheckpointReady)
        p = ctx.payload
        if not p.final:
            return  # intermediate checkpoints are kept by the trainer, not registered
        await asyncio.to_thread(
            core.register_version,
            p.model_name,
            p.checkpoint,
            run_id=p.run_id,
            kind=p.kind_of_run,
            method=p.method,
            parent=p.parent,
            adapter=p.adapter,
            datasets=[d.model_dump() for d in p.datasets],
            hyperparameters=p.hyperparameters,
            train_metrics=p.metrics,
            quantization=p.quantization.model_dump() if p.quantization else None,
            actor=ctx.envelope.id,
            event_id=ctx.event_key,
            causation=ctx.envelope,
        )

    @bus.handle(EvaluationCompleted, idempotent=True)
    async def on_evaluation(ctx: HandlerContext[EvaluationCompleted]) -> None:
        require_owner(ctx.envelope, EvaluationCompleted)
        p = ctx.payload
        await asyncio.to_thread(
            core.record_evaluation,
            p.model,
            p.results,
            p.details_uri,
            actor=ctx.envelope.id,
            event_id=ctx.event_key,
            causation=ctx.envelope,
        )

    @bus.handle(DeploymentReady, idempotent=True)
    async def on_deployed(ctx: HandlerContext[DeploymentReady]) -> None:
        require_owner(ctx.envelope, DeploymentReady)
        p = ctx.payload
        await asyncio.to_thread(
            core.record_deployment,
            p.model,
            p.instance,
            ok=True,
            served_name=p.served_name,
            actor=ctx.envelope.id,
            event_id=ctx.event_key,
            causation=ctx.envelope,
        )

    @bus.handle(DeploymentFailed, idempotent=True)
    async def on_deploy_failed(ctx: HandlerContext[DeploymentFailed]) -> None:
        require_owner(ctx.envelope, DeploymentFailed)  # a failed champion is rolled back
        p = ctx.payload
        await asyncio.to_thread(
            core.record_deployment,
            p.model,
            p.instance,
            ok=False,
            error=p.error,
            actor=ctx.envelope.id,
            event_id=ctx.event_key,
            causation=ctx.envelope,
        )
