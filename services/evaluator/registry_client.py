"""The champion a pairwise task compares against, asked of the registry over gRPC (adapter side:
the core takes the champion as an argument)."""

from __future__ import annotations

import grpc

from contracts.events import ArtifactRef, ModelRef
from contracts.proto.puyu.registry.v1 import registry_pb2, registry_pb2_grpc
from shared.auth import ClientAuth


async def find_champion(
    target: str, model_name: str, timeout: float = 10.0, auth: ClientAuth | None = None
) -> tuple[ModelRef, ArtifactRef] | None:
    """The version holding ``model_name``'s champion alias and its artifact; None when there is none
    yet (an unknown model or alias is NOT_FOUND); other gRPC errors propagate (retried by the bus)."""
    async with (auth or ClientAuth()).channel(target) as channel:
        stub = registry_pb2_grpc.ModelRegistryStub(channel)
        request = registry_pb2.GetVersionRequest(model_name=model_name, alias="champion")
        try:
            version = await stub.GetVersion(request, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise
    a = version.artifact
    if not a.uri:
        return None
    ref = ModelRef(model_name=version.model_name, version=int(version.version))
    return ref, ArtifactRef(uri=a.uri, sha256=a.sha256, size_bytes=a.size_bytes)
