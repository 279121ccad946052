"""Serve the registry's champions at start-up, so a restarted gateway serves what it served before.

Promotions arrive as ``model.promoted`` events, which a gateway consumes once; a gateway process that
restarts (or a new replica) asks the registry over gRPC which versions are champions and loads them.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

import grpc

from contracts.events import ArtifactRef
from contracts.proto.puyu.registry.v1 import registry_pb2, registry_pb2_grpc
from services.inference_gateway.core.pool import ModelPool
from shared.artifacts import ArtifactStore
from shared.auth import ClientAuth

log = logging.getLogger(__name__)


async def champions(
    target: str, timeout: float = 10.0, auth: ClientAuth | None = None
) -> list[registry_pb2.ModelVersion]:
    async with (auth or ClientAuth()).channel(target) as channel:
        stub = registry_pb2_grpc.ModelRegistryStub(channel)
        models = await stub.ListModels(registry_pb2.ListModelsRequest(), timeout=timeout)
        out = []
        for model in models.models:
            if model.champion_version:
                request = registry_pb2.GetVersionRequest(model_name=model.model_name, alias="champion")
                out.append(await stub.GetVersion(request, timeout=timeout))
        return out


async def restore_champions(
    pool: ModelPool,
    store: ArtifactStore,
    target: str,
    attempts: int = 30,
    delay: float = 2.0,
    auth: ClientAuth | None = None,
) -> int:
    """Load every champion unless a newer promotion got there first; retries while the registry is starting.

    Returns how many it deployed."""
    for attempt in range(1, attempts + 1):
        asked = datetime.now(UTC)  # promotions after this are newer than the registry's answer
        try:
            versions = await champions(target, auth=auth)
            break
        except grpc.aio.AioRpcError as exc:
            if attempt == attempts:
                log.warning(
                    "registry at %s unavailable (%s): serving only what gets promoted from now on",
                    target,
                    exc.code().name,
                )
                return 0
            await asyncio.sleep(delay)
    restored = 0
    for version in versions:
        try:
            # what the registry attests, and only from the store with the registered digest
            artifact = ArtifactRef(
                uri=version.artifact.uri,
                sha256=version.artifact.sha256,
                size_bytes=version.artifact.size_bytes,
            )
            path = await asyncio.to_thread(store.fetch_verified, artifact)
            served = await pool.deploy(version.model_name, int(version.version), path, as_of=asked)
            restored += served is not None
        except Exception:
            log.exception("restoring champion %s:%d failed", version.model_name, version.version)
    if restored:
        log.info("serving %d champion(s) from the registry", restored)
    return restored
