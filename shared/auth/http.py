"""Authentication on HTTP: a FastAPI dependency each route declares with the role it needs.

``ServiceRuntime`` installs its ``Authenticator`` on every app it serves and refuses to start when a
route declares no role (``undeclared_routes``); ``/health`` and ``/metrics`` are the open ones. An
app not served by a ``ServiceRuntime`` authenticates with the settings of the environment.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from shared.auth.authenticator import Authenticator
from shared.auth.principals import PermissionDenied, Principal, Role, Unauthenticated
from shared.settings import CommonSettings

OPEN_PATHS = frozenset({"/health", "/metrics"})  # what load balancers and Prometheus reach unauthenticated
_STATE = "puyu_authenticator"
# FastAPI's own pages: the API's description (no data; the code is public) and its viewers.
_DOCS_PATHS = frozenset({"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})


class AuthFailure(HTTPException):
    """401 (who are you) or 403 (not allowed); an app may answer it in its own error shape."""

    def __init__(self, status_code: int, detail: str) -> None:
        headers = {"WWW-Authenticate": "Bearer"} if status_code == 401 else None
        super().__init__(status_code, detail, headers)


def install_auth(app: FastAPI, authenticator: Authenticator) -> None:
    setattr(app.state, _STATE, authenticator)


def authenticator_of(app: FastAPI) -> Authenticator:
    found = getattr(app.state, _STATE, None)
    if found is None:
        found = Authenticator.from_settings(CommonSettings())
        install_auth(app, found)
    return found  # type: ignore[no-any-return]


class RoleCheck:
    """The dependency: the caller's principal, or 401 / 403."""

    def __init__(self, role: Role) -> None:
        self.role = role

    async def __call__(self, request: Request) -> Principal:
        try:
            return authenticator_of(request.app).authorize(request.headers.get("authorization"), self.role)
        except Unauthenticated as exc:
            raise AuthFailure(401, str(exc)) from None
        except PermissionDenied as exc:
            raise AuthFailure(403, str(exc)) from None

    def __repr__(self) -> str:
        return f"RoleCheck({self.role.label})"


_CHECKS = {role: RoleCheck(role) for role in Role}


def requires(role: Role) -> Any:
    """``dependencies=[requires(Role.READER)]``, or ``principal: Principal = requires(Role.OPERATOR)``
    where the route needs to know who calls."""
    return Depends(_CHECKS[role])


@dataclass(frozen=True)
class ServedRoute:
    methods: tuple[str, ...]
    path: str
    role: Role | None  # None: it declares none
    api: bool  # a FastAPI route (False: a raw Starlette route or mount)


def _declared(dependant: Dependant | None) -> Role | None:
    """The role declared through a route's dependencies, at any depth (the highest if several)."""
    pending = list(dependant.dependencies) if dependant else []
    roles = []
    while pending:
        dep = pending.pop()
        if isinstance(dep.call, RoleCheck):
            roles.append(dep.call.role)
        pending.extend(dep.dependencies)
    return max(roles) if roles else None


def served_routes(app: FastAPI) -> list[ServedRoute]:
    """Every route ``app`` answers, with the routers it includes flattened (FastAPI may keep an
    included router as one entry that resolves its routes when asked)."""
    out = []
    for route in app.routes:
        if isinstance(route, APIRoute):
            methods = tuple(sorted(route.methods or ()))
            out.append(ServedRoute(methods, route.path, _declared(route.dependant), True))
        elif hasattr(route, "effective_route_contexts"):
            for context in route.effective_route_contexts():
                dependant = getattr(context, "dependant", None)
                path = getattr(context, "path_format", "") or getattr(context, "path", "")
                methods = tuple(sorted(getattr(context, "methods", None) or ()))
                out.append(ServedRoute(methods, path, _declared(dependant), dependant is not None))
        else:
            methods = tuple(sorted(getattr(route, "methods", None) or ()))
            out.append(ServedRoute(methods, getattr(route, "path", ""), None, False))
    return out


def undeclared_routes(app: FastAPI) -> list[str]:
    """Routes of ``app`` (besides the open ones) that declare no role: each would be a hole."""
    missing = []
    for route in served_routes(app):
        if route.path in OPEN_PATHS or (not route.api and route.path in _DOCS_PATHS):
            continue
        if route.role is None:
            missing.append(f"{','.join(route.methods) or 'ANY'} {route.path}")
    return missing
