"""Bus adapter: ``model.promoted`` → load, warm and switch the pool → ``deployment.ready`` | ``deployment.failed``."""

from __future__ import annotations

import asyncio
import logging
import re

from contracts.events import DeploymentFailed, DeploymentReady, ModelPromoted
from services.inference_gateway.config import GatewaySettings
from services.inference_gateway.gateway import Gateway
from shared.artifacts import ArtifactStore
from shared.bus import Bus, HandlerContext

log = logging.getLogger(__name__)


def register_handlers(bus: Bus, core: Gateway, settings: GatewaySettings) -> None:
    """A process with engines follows every promotion; one that only routes follows none.

    Every worker process deploys every promotion, so each has its own durable consumer (named after
    its instance) and no shared processed-event marker; a replay of old promotions to a new consumer
    is skipped by the pool (older than what is served). The gateway's own pool consumes them once.
    """
    pool, instance = core.pool, core.instance
    if pool is None:
        return
    store = ArtifactStore(settings.artifact_root_uri)
    per_instance = settings.gateway_role == "worker"
    durable = f"inference-worker-{re.sub(r'[^A-Za-z0-9_-]', '_', instance)}--model_promoted"

    @bus.handle(
        ModelPromoted,
        ack_wait=60.0,
        durable=durable if per_instance else None,
        idempotent=not per_instance,
        # a worker gone for an hour (rescheduled under a new name) leaves no consumer behind
        inactive_threshold=3600.0 if per_instance else None,
    )
    async def on_model_promoted(ctx: HandlerContext[ModelPromoted]) -> None:
        p = ctx.payload
        name, version = p.model.model_name, p.model.version
        # one deployment per promotion: a version promoted again (after a rollback) is a new deployment
        event_id = f"deployed:{name}:{version}:{instance}:{ctx.envelope.id}"
        if pool.stale(name, ctx.envelope.time):  # a replayed promotion older than what is served
            log.info("skipping promotion of %s:%d from %s: superseded", name, version, ctx.envelope.time)
            return
        try:
            path = await asyncio.to_thread(store.fetch, p.artifact.uri)
            served = await pool.deploy(name, version, path, wait_drain=False, as_of=ctx.envelope.time)
        except Exception as exc:
            # a version that cannot load will not load on retry either: say so, and keep serving the old one
            log.exception("deploying %s:%d failed", name, version)
            await ctx.publish(
                DeploymentFailed(model=p.model, instance=instance, error=f"{type(exc).__name__}: {exc}"),
                event_id=f"deploy-failed:{name}:{version}:{instance}:{ctx.envelope.id}",
            )
            return
        if served is None:  # a promotion older than the version served (a replay): nothing to do
            return
        await ctx.publish(
            DeploymentReady(model=p.model, served_name=served.names(p.alias)[0], instance=instance),
            event_id=event_id,
        )
