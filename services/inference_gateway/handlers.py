"""Bus adapter: ``model.promoted`` → load, warm and switch the gateway → ``deployment.ready`` | ``deployment.failed``."""

from __future__ import annotations

import asyncio
import logging

from contracts.events import DeploymentFailed, DeploymentReady, ModelPromoted
from services.inference_gateway.pool import ModelPool
from shared.artifacts import ArtifactStore
from shared.bus import Bus, HandlerContext

log = logging.getLogger(__name__)


def register_handlers(bus: Bus, pool: ModelPool, store: ArtifactStore, instance: str) -> None:
    @bus.handle(ModelPromoted, ack_wait=60.0)
    async def on_model_promoted(ctx: HandlerContext[ModelPromoted]) -> None:
        p = ctx.payload
        name, version = p.model.model_name, p.model.version
        # one deployment per promotion: a version promoted again (after a rollback) is a new deployment
        event_id = f"deployed:{name}:{version}:{instance}:{ctx.envelope.id}"
        try:
            path = await asyncio.to_thread(store.fetch, p.artifact.uri)
            served = await pool.deploy(name, version, path, wait_drain=False)
        except Exception as exc:
            # a version that cannot load will not load on retry either: say so, and keep serving the old one
            log.exception("deploying %s:%d failed", name, version)
            await ctx.publish(
                DeploymentFailed(model=p.model, instance=instance, error=f"{type(exc).__name__}: {exc}"),
                event_id=f"deploy-failed:{name}:{version}:{instance}:{ctx.envelope.id}",
            )
            return
        await ctx.publish(
            DeploymentReady(model=p.model, served_name=served.names(p.alias)[0], instance=instance),
            event_id=event_id,
        )
