"""Resolve a base model version to its artifact through the registry's gRPC API."""

from __future__ import annotations

import grpc

from contracts.events import ArtifactRef, ModelRef
from contracts.proto.puyu.registry.v1 import registry_pb2, registry_pb2_grpc
from shared.auth import ClientAuth
from shared.errors import Refusal


class UnknownModel(Refusal, LookupError):
    """The registry does not know the model or version (permanent: the job is refused)."""


async def resolve_base(
    target: str, ref: ModelRef, timeout: float = 10.0, auth: ClientAuth | None = None
) -> ArtifactRef:
    """The artifact of ``ref``; UnknownModel on NOT_FOUND, grpc errors (retryable) otherwise
    (``auth``: this service's token and TLS, from its settings)."""
    async with (auth or ClientAuth()).channel(target) as channel:
        stub = registry_pb2_grpc.ModelRegistryStub(channel)
        request = registry_pb2.GetVersionRequest(model_name=ref.model_name, version=ref.version)
        try:
            version = await stub.GetVersion(request, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                raise UnknownModel(
                    f"unknown model {ref.model_name} version {ref.version}: {exc.details()}"
                ) from exc
            raise
    if not version.artifact.uri:
        raise UnknownModel(f"model {ref.model_name} version {ref.version} has no artifact")
    a = version.artifact
    return ArtifactRef(uri=a.uri, sha256=a.sha256, size_bytes=a.size_bytes)
