"""Bus adapter: ``model.promoted`` → load, warm and switch the pool → ``deployment.ready`` | ``deployment.failed``."""

from __future__ import annotations

import asyncio
import logging
import re

from contracts.events import DeploymentFailed, DeploymentReady, ModelPromoted
from services.inference_gateway.attestation import (
    ChannelFactory,
    ForgedArtifact,
    NotAttested,
    attested_artifact,
)
from services.inference_gateway.config import GatewaySettings
from services.inference_gateway.gateway import Gateway
from shared.artifacts import ArtifactStore
from shared.auth import ClientAuth
from shared.bus import Bus, HandlerContext
from shared.ports import registry_grpc_target
from shared.provenance import require_owner

log = logging.getLogger(__name__)


def register_handlers(bus: Bus, core: Gateway, settings: GatewaySettings) -> None:
    """A process with engines follows every promotion; one that only routes follows none.

    A promotion is deployed only as the registry attests it (``attestation``), and its artifact only
    when it lies in the artifact store with the registered digest.

    Every worker process deploys every promotion, so each has its own durable consumer (named after
    its instance) and no shared processed-event marker; a replay of old promotions to a new consumer
    is skipped by the pool (older than what is served). The gateway's own pool consumes them once.
    """
    pool, instance = core.pool, core.instance
    if pool is None:
        return
    store = ArtifactStore(settings.artifact_root_uri)
    registry = registry_grpc_target(settings)
    channel: ChannelFactory = ClientAuth.from_settings(settings).channel  # this service's token and TLS
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
        require_owner(ctx.envelope, ModelPromoted)
        p = ctx.payload
        name, version = p.model.model_name, p.model.version
        # one deployment per promotion: a version promoted again (after a rollback) is a new deployment
        event_id = f"deployed:{name}:{version}:{instance}:{ctx.envelope.id}"
        failed_id = f"deploy-failed:{name}:{version}:{instance}:{ctx.envelope.id}"
        if pool.stale(name, ctx.envelope.time):  # a replayed promotion older than what is served
            log.info("skipping promotion of %s:%d from %s: superseded", name, version, ctx.envelope.time)
            return
        try:
            artifact = await attested_artifact(registry, p, channel=channel)
        except NotAttested as exc:
            log.warning("refusing to deploy %s:%d: %s", name, version, exc)
            error = f"not attested by the registry: {exc}"
            await ctx.publish(
                DeploymentFailed(model=p.model, instance=instance, error=error), event_id=failed_id
            )
            raise
        except ForgedArtifact as exc:
            log.warning("refusing to deploy %s:%d: %s", name, version, exc)
            raise
        try:
            path = await asyncio.to_thread(store.fetch_verified, artifact)
            served = await pool.deploy(name, version, path, wait_drain=False, as_of=ctx.envelope.time)
        except Exception as exc:
            # a version that cannot load will not load on retry either: say so, and keep serving the old one
            log.exception("deploying %s:%d failed", name, version)
            error = f"{type(exc).__name__}: {exc}"
            await ctx.publish(
                DeploymentFailed(model=p.model, instance=instance, error=error), event_id=failed_id
            )
            return
        if served is None:  # a promotion older than the version served (a replay): nothing to do
            return
        await ctx.publish(
            DeploymentReady(model=p.model, served_name=served.names(p.alias)[0], instance=instance),
            event_id=event_id,
        )
