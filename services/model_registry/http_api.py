"""REST adapter on the service's FastAPI app: /v1/models..., /v1/audit.

Reads need a reader, changes an operator; the audit log's actor is the authenticated principal. An
``actor`` in a body is accepted for older clients and ignored: a caller cannot write another name."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from fastapi import APIRouter, HTTPException
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, Field

from services.model_registry.core import (
    AuditView,
    ModelView,
    NotFound,
    RegistryRefusal,
    RollbackView,
    TagsView,
    VersionView,
)
from services.model_registry.core.registry import Registry
from shared.auth import Principal, Role
from shared.auth.http import requires

READ = requires(Role.READER)
ACTOR_IGNORED = "Ignored: the audit log records the authenticated principal."
P = ParamSpec("P")
T = TypeVar("T")


class PromoteBody(BaseModel):
    version: int = Field(ge=1)
    reason: str = ""
    actor: str | None = Field(default=None, description=ACTOR_IGNORED)


class RollbackBody(BaseModel):
    reason: str = "manual rollback"
    actor: str | None = Field(default=None, description=ACTOR_IGNORED)


class TagsBody(BaseModel):
    set: dict[str, str] = Field(default_factory=dict, description="Tags to add or overwrite.")
    delete: list[str] = Field(default_factory=list, description="Tag keys to remove.")
    reason: str = ""
    actor: str | None = Field(default=None, description=ACTOR_IGNORED)


class ModelPatch(TagsBody):
    description: str | None = None


async def call(fn: Callable[P, T], *args: P.args, **kw: P.kwargs) -> T:
    """Run a core call in a worker thread; its refusals become 404 (unknown) or 400."""
    try:
        return await asyncio.to_thread(fn, *args, **kw)
    except NotFound as exc:
        raise HTTPException(404, str(exc)) from exc
    except RegistryRefusal as exc:
        raise HTTPException(400, str(exc)) from exc


def make_router(registry: Registry) -> APIRouter:
    router = APIRouter(prefix="/v1")

    @router.get("/models", dependencies=[READ])
    async def list_models() -> list[ModelView]:
        return await call(registry.list_models)

    @router.get("/models/{name}", dependencies=[READ])
    async def show_model(name: str) -> dict[str, Any]:
        """The model's summary with all its versions."""
        versions = await call(registry.list_versions, name)
        [model] = [m for m in await call(registry.list_models) if m.model_name == name]
        return model.model_dump(mode="json") | {"versions": [v.model_dump(mode="json") for v in versions]}

    @router.get("/models/{name}/versions/{version}", dependencies=[READ])
    async def get_version(name: str, version: int) -> VersionView:
        return await call(registry.get_version, name, version=version)

    @router.get("/models/{name}/aliases/{alias}", dependencies=[READ])
    async def get_alias(name: str, alias: str) -> VersionView:
        return await call(registry.get_version, name, alias=alias)

    @router.get(
        "/models/{name}/versions/{version}/card", response_class=PlainTextResponse, dependencies=[READ]
    )
    async def card(name: str, version: int) -> str:
        return await call(registry.model_card, name, version=version)

    @router.post("/models/{name}/promote")
    async def promote(
        name: str, body: PromoteBody, principal: Principal = requires(Role.OPERATOR)
    ) -> VersionView:
        return await call(registry.promote, name, body.version, actor=principal.name, reason=body.reason)

    @router.post("/models/{name}/rollback")
    async def rollback(
        name: str, body: RollbackBody | None = None, principal: Principal = requires(Role.OPERATOR)
    ) -> RollbackView:
        body = body or RollbackBody()
        return await call(registry.rollback, name, actor=principal.name, reason=body.reason)

    @router.patch("/models/{name}")
    async def patch_model(
        name: str, body: ModelPatch, principal: Principal = requires(Role.OPERATOR)
    ) -> TagsView:
        """Model description and model-level tags."""
        return await call(
            registry.set_tags,
            name,
            None,
            set_=body.set,
            delete=body.delete,
            description=body.description,
            actor=principal.name,
            reason=body.reason,
        )

    @router.patch("/models/{name}/versions/{version}/tags")
    async def patch_version_tags(
        name: str, version: int, body: TagsBody, principal: Principal = requires(Role.OPERATOR)
    ) -> dict[str, dict[str, str]]:
        out = await call(
            registry.set_tags,
            name,
            version,
            set_=body.set,
            delete=body.delete,
            actor=principal.name,
            reason=body.reason,
        )
        return {"tags": out.tags}

    @router.get("/audit", dependencies=[READ])
    async def audit(model: str | None = None, limit: int = 200) -> list[AuditView]:
        return await call(registry.audit, model, max(1, min(limit, 1000)))

    return router
