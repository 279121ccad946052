"""gRPC adapter: puyu.registry.v1.ModelRegistry over the core (DB calls in worker threads).

The audit log's actor is the authenticated principal of the call."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

import grpc

from contracts.events import ArtifactRef, ModelRef, QuantizationLineage
from contracts.proto.puyu.registry.v1 import registry_pb2 as pb
from contracts.proto.puyu.registry.v1 import registry_pb2_grpc
from services.model_registry.core import AuditView, NotFound, RegistryRefusal, VersionView
from services.model_registry.core.registry import Registry
from shared.auth import Role
from shared.auth.grpc import current_principal, rpc_role

P = ParamSpec("P")
T = TypeVar("T")
SERVICE_NAME = "puyu.registry.v1.ModelRegistry"


def version_to_proto(v: VersionView) -> pb.ModelVersion:
    return pb.ModelVersion(
        model_name=v.model_name,
        version=v.version,
        artifact=pb.Artifact(uri=v.artifact.uri, sha256=v.artifact.sha256, size_bytes=v.artifact.size_bytes),
        format=v.format,
        run_id=v.run_id,
        parent_model=v.parent.model_name if v.parent else "",
        parent_version=v.parent.version if v.parent else 0,
        aliases=v.aliases,
        status=v.status.value,
        evaluations=[
            pb.EvaluationResult(
                task=e.task,
                metrics=e.metrics,
                primary_metric=e.primary_metric,
                version_hash=e.version_hash,
                num_samples=e.num_samples,
            )
            for e in v.evaluations
        ],
        tags={str(k): str(x) for k, x in v.tags.items()},
        created_at=v.created_at.isoformat(),
        lineage_json=json.dumps(
            {
                "kind": v.kind,
                "method": v.method,
                "datasets": v.datasets,
                "hyperparameters": v.hyperparameters,
                "adapter": v.adapter,
                "quantization": v.quantization,
            }
        ),
    )


def audit_to_proto(e: AuditView) -> pb.AuditEntry:
    return pb.AuditEntry(
        id=e.id,
        time=e.time.isoformat(),
        actor=e.actor,
        action=e.action,
        model_name=e.model,
        version=e.version or 0,
        reason=e.reason,
        details_json=json.dumps(e.details, default=str),
    )


class RegistryServicer(registry_pb2_grpc.ModelRegistryServicer):
    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    async def _call(
        self, context: grpc.aio.ServicerContext, fn: Callable[P, T], *args: P.args, **kw: P.kwargs
    ) -> T:
        try:
            return await asyncio.to_thread(fn, *args, **kw)
        except NotFound as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        except RegistryRefusal as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        raise AssertionError("unreachable")  # abort raises

    @rpc_role(Role.OPERATOR)
    async def RegisterVersion(self, request: pb.RegisterVersionRequest, context: Any) -> pb.ModelVersion:
        try:
            lineage = json.loads(request.lineage_json) if request.lineage_json else {}
            if not isinstance(lineage, dict):
                raise ValueError("lineage_json must be a JSON object")
            artifact = ArtifactRef(
                uri=request.artifact.uri,
                sha256=request.artifact.sha256,
                size_bytes=request.artifact.size_bytes,
            )
            parent = (
                ModelRef(model_name=request.parent_model, version=request.parent_version)
                if request.parent_model
                else None
            )
            quant = lineage.get("quantization")
            quantization = QuantizationLineage.model_validate(quant).model_dump() if quant else None
        except ValueError as exc:  # malformed JSON or references: the request itself is bad
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad request: {exc}")
        v = await self._call(
            context,
            self.registry.register_version,
            request.model_name,
            artifact,
            run_id=request.run_id,
            parent=parent,
            kind=str(lineage.get("kind", "pretrain")),
            method=str(lineage.get("method", "full")),
            datasets=list(lineage.get("datasets", [])),
            hyperparameters=dict(lineage.get("hyperparameters", {})),
            quantization=quantization,
            tags=dict(request.tags),
            actor=current_principal().name,
        )
        assert v is not None  # no event id: never a duplicate
        return version_to_proto(v)

    @rpc_role(Role.READER)
    async def GetVersion(self, request: pb.GetVersionRequest, context: Any) -> pb.ModelVersion:
        return version_to_proto(await self._get(request, context))

    async def _get(self, request: pb.GetVersionRequest, context: Any) -> VersionView:
        return await self._call(
            context,
            self.registry.get_version,
            request.model_name,
            version=request.version or None,
            alias=request.alias or None,
        )

    @rpc_role(Role.READER)
    async def ListVersions(self, request: pb.ListVersionsRequest, context: Any) -> pb.ListVersionsResponse:
        vs = await self._call(context, self.registry.list_versions, request.model_name)
        return pb.ListVersionsResponse(versions=[version_to_proto(v) for v in vs])

    @rpc_role(Role.READER)
    async def ListModels(self, request: pb.ListModelsRequest, context: Any) -> pb.ListModelsResponse:
        ms = await self._call(context, self.registry.list_models)
        return pb.ListModelsResponse(
            models=[
                pb.ModelSummary(
                    model_name=m.model_name,
                    latest_version=m.latest_version,
                    champion_version=m.champion_version,
                )
                for m in ms
            ]
        )

    @rpc_role(Role.OPERATOR)
    async def SetAlias(self, request: pb.SetAliasRequest, context: Any) -> pb.ModelVersion:
        v = await self._call(
            context,
            self.registry.set_alias,
            request.model_name,
            request.alias,
            request.version,
            actor=current_principal().name,
            reason=request.reason,
        )
        return version_to_proto(v)

    @rpc_role(Role.OPERATOR)
    async def Rollback(self, request: pb.RollbackRequest, context: Any) -> pb.RollbackResponse:
        out = await self._call(
            context,
            self.registry.rollback,
            request.model_name,
            actor=current_principal().name,
            reason=request.reason or "manual rollback",
        )
        return pb.RollbackResponse(
            restored=out.restored, rolled_back=out.rolled_back, reason=out.reason, event_id=out.event_id
        )

    @rpc_role(Role.OPERATOR)
    async def SetTags(self, request: pb.SetTagsRequest, context: Any) -> pb.SetTagsResponse:
        out = await self._call(
            context,
            self.registry.set_tags,
            request.model_name,
            request.version or None,
            set_=dict(request.set),
            delete=list(request.delete),
            actor=current_principal().name,
            reason=request.reason,
        )
        return pb.SetTagsResponse(tags={str(k): str(x) for k, x in out.tags.items()})

    @rpc_role(Role.READER)
    async def ListAudit(self, request: pb.ListAuditRequest, context: Any) -> pb.ListAuditResponse:
        limit = max(1, min(request.limit or 200, 1000))
        rows = await self._call(context, self.registry.audit, request.model_name or None, limit)
        return pb.ListAuditResponse(entries=[audit_to_proto(e) for e in rows])

    @rpc_role(Role.READER)
    async def GetModelCard(self, request: pb.GetVersionRequest, context: Any) -> pb.ModelCard:
        markdown = await self._call(
            context,
            self.registry.model_card,
            request.model_name,
            version=request.version or None,
            alias=request.alias or None,
        )
        return pb.ModelCard(markdown=markdown)
