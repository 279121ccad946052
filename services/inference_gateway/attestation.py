"""What the gateway serves is what the registry attests, never what a ``model.promoted`` event says.

An event on the bus is only as trustworthy as whoever could publish it; the registry's database is
the fact. On each promotion the gateway asks the registry (gRPC GetVersion of the alias) and deploys
only when the registry names that same version, with that same artifact URI and digest, as the
alias's target. The registry commits a promotion before its outbox relays the event, so the answer
already shows it.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc

from contracts.events import ArtifactRef, ModelPromoted
from contracts.proto.puyu.registry.v1 import registry_pb2, registry_pb2_grpc
from shared.errors import Refusal

ChannelFactory = Callable[[str], grpc.aio.Channel]


class NotAttested(Refusal):
    """The registry's alias does not point at the promoted version (a forged or a stale promotion):
    reported as a failed deployment of that version, which the registry records and nothing more."""


class ForgedArtifact(Refusal):
    """The registry's alias points at the version, but with another artifact than the event's: the
    event is forged. Not reported as a failed deployment of the champion (that rolls it back)."""


async def attested_artifact(
    target: str,
    promoted: ModelPromoted,
    timeout: float = 10.0,
    channel: ChannelFactory = grpc.aio.insecure_channel,
) -> ArtifactRef:
    """The artifact the registry attests for ``promoted``; NotAttested / ForgedArtifact otherwise.

    A registry that cannot be reached raises its gRPC error: the promotion is retried."""
    name, version = promoted.model.model_name, promoted.model.version
    async with channel(target) as ch:
        stub = registry_pb2_grpc.ModelRegistryStub(ch)
        request = registry_pb2.GetVersionRequest(model_name=name, alias=promoted.alias)
        try:
            attested = await stub.GetVersion(request, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                raise NotAttested(
                    f"the registry has no {promoted.alias} {name}:{version} ({exc.details()})"
                ) from exc
            raise
    if attested.version != version:
        raise NotAttested(
            f"the registry's {promoted.alias} of {name} is version {attested.version}, not {version}"
        )
    artifact = ArtifactRef(
        uri=attested.artifact.uri, sha256=attested.artifact.sha256, size_bytes=attested.artifact.size_bytes
    )
    if (artifact.uri, artifact.sha256) != (promoted.artifact.uri, promoted.artifact.sha256):
        raise ForgedArtifact(
            f"{name}:{version} is registered with {artifact.uri} (sha256 {artifact.sha256}), "
            f"the event names {promoted.artifact.uri} (sha256 {promoted.artifact.sha256})"
        )
    return artifact
