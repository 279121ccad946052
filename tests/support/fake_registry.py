"""A registry's gRPC face for gateway tests: it attests exactly the champions a test sets, so a test
can publish a promotion the registry stands behind, or one it never made."""

from __future__ import annotations

from concurrent import futures
from typing import Any

import grpc

from contracts.events import ArtifactRef
from contracts.proto.puyu.registry.v1 import registry_pb2 as pb
from contracts.proto.puyu.registry.v1 import registry_pb2_grpc
from shared.natsserver import free_port


class FakeRegistry(registry_pb2_grpc.ModelRegistryServicer):
    """A synchronous server in threads of its own: usable from async tests and sync fixtures alike."""

    def __init__(self) -> None:
        self.champions: dict[str, tuple[int, ArtifactRef]] = {}
        self.port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        self._server: grpc.Server | None = None

    def promote(self, name: str, version: int, artifact: ArtifactRef) -> None:
        self.champions[name] = (version, artifact)

    def start(self) -> FakeRegistry:
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        registry_pb2_grpc.add_ModelRegistryServicer_to_server(self, self._server)
        self._server.add_insecure_port(self.target)
        self._server.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(None)

    def GetVersion(self, request: pb.GetVersionRequest, context: Any) -> pb.ModelVersion:
        if request.alias != "champion" or request.model_name not in self.champions:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no {request.alias} of {request.model_name}")
        version, art = self.champions[request.model_name]
        if request.version and request.version != version:
            context.abort(grpc.StatusCode.NOT_FOUND, "unknown version")
        return pb.ModelVersion(
            model_name=request.model_name,
            version=version,
            artifact=pb.Artifact(uri=art.uri, sha256=art.sha256, size_bytes=art.size_bytes),
            aliases=["champion"],
        )

    def ListModels(self, request: pb.ListModelsRequest, context: Any) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(
            models=[
                pb.ModelSummary(model_name=name, latest_version=v, champion_version=v)
                for name, (v, _) in self.champions.items()
            ]
        )
