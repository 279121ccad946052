"""Bus adapters: checkpoint.ready → register; evaluation.completed → policy; deployment.* → record."""

from __future__ import annotations

import asyncio

from contracts.events import CheckpointReady, DeploymentFailed, DeploymentReady, EvaluationCompleted
from services.model_registry.core import InvalidInput, NotFound, Registry
from services.model_registry.outbox import OutboxRelay
from shared.bus import Bus, HandlerContext, JobRejected


def register_handlers(bus: Bus, registry: Registry, relay: OutboxRelay) -> None:
    # Idempotent twice over: the bus's KV marker skips cheap redeliveries; the processed_events row,
    # committed with the effect, is the one that holds when the process dies between the two.

    @bus.handle(CheckpointReady, idempotent=True)
    async def on_checkpoint(ctx: HandlerContext[CheckpointReady]) -> None:
        p = ctx.payload
        if not p.final:
            return  # intermediate checkpoints are kept by the trainer, not registered
        try:
            await asyncio.to_thread(
                registry.register_version,
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
                actor=ctx.envelope.id,
                event_id=ctx.envelope.id,
                causation=ctx.envelope,
            )
        except InvalidInput as exc:
            raise JobRejected(str(exc)) from exc
        relay.poke()

    @bus.handle(EvaluationCompleted, idempotent=True)
    async def on_evaluation(ctx: HandlerContext[EvaluationCompleted]) -> None:
        p = ctx.payload
        try:
            await asyncio.to_thread(
                registry.record_evaluation,
                p.model,
                p.results,
                p.details_uri,
                actor=ctx.envelope.id,
                event_id=ctx.envelope.id,
                causation=ctx.envelope,
            )
        except (InvalidInput, NotFound) as exc:
            raise JobRejected(str(exc)) from exc
        relay.poke()

    @bus.handle(DeploymentReady, idempotent=True)
    async def on_deployed(ctx: HandlerContext[DeploymentReady]) -> None:
        p = ctx.payload
        try:
            await asyncio.to_thread(
                registry.record_deployment,
                p.model,
                p.instance,
                ok=True,
                served_name=p.served_name,
                actor=ctx.envelope.id,
                event_id=ctx.envelope.id,
                causation=ctx.envelope,
            )
        except NotFound as exc:
            raise JobRejected(str(exc)) from exc

    @bus.handle(DeploymentFailed, idempotent=True)
    async def on_deploy_failed(ctx: HandlerContext[DeploymentFailed]) -> None:
        p = ctx.payload
        try:
            await asyncio.to_thread(
                registry.record_deployment,
                p.model,
                p.instance,
                ok=False,
                error=p.error,
                actor=ctx.envelope.id,
                event_id=ctx.envelope.id,
                causation=ctx.envelope,
            )
        except NotFound as exc:
            raise JobRejected(str(exc)) from exc
        relay.poke()
