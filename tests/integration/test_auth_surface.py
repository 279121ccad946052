"""Every HTTP route and gRPC method of every service is closed to callers without a token (401 /
UNAUTHENTICATED) and to callers below its role (403 / PERMISSION_DENIED), and lets the declared role
through; health, metrics and reflection stay open. The routes and methods are enumerated from the
services as built (``create_service``), so a new one cannot slip by."""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from fastapi import FastAPI
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shared.auth import Role
from shared.auth.grpc import UndeclaredRole, rpc_role
from shared.auth.http import OPEN_PATHS, requires, served_routes
from shared.natsserver import free_port
from shared.ports import SERVICES
from shared.service import ServiceRuntime
from tests.support.auth_tokens import bearer, require_auth

pytestmark = pytest.mark.integration
REFUSED_HTTP = {401, 403}
REFUSED_GRPC = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}
WORKER = "inference_worker"  # the gateway's engine process: the same package in its other role


@pytest.fixture
def tokens(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[Role, str]:
    monkeypatch.setenv("PUYU_LOG_LEVEL", "WARNING")
    return require_auth(tmp_path, monkeypatch)


def _runtime(name: str, monkeypatch: pytest.MonkeyPatch) -> ServiceRuntime:
    monkeypatch.setenv("PUYU_GRPC_PORT_BASE", str(free_port() - 20))
    port = str(free_port())
    for key in ("PUYU_REGISTRY_GRPC_PORT", "PUYU_GATEWAY_GRPC_PORT", "PUYU_AGENT_GRPC_PORT"):
        monkeypatch.setenv(key, port)
    if name == WORKER:
        monkeypatch.setenv("PUYU_GATEWAY_ROLE", "worker")
        name = "inference_gateway"
    else:
        monkeypatch.delenv("PUYU_GATEWAY_ROLE", raising=False)
    return importlib.import_module(f"services.{name}.app").create_service().runtime  # type: ignore[no-any-return]


def _lower(role: Role) -> Role | None:
    return Role(role - 1) if role > Role.READER else None


def _cases(role: Role, tokens: dict[Role, str]) -> Iterator[tuple[str, str | None, bool]]:
    """(what, token, refused?): none, a wrong one, the role below, the role itself, the admin."""
    yield "no token", None, True
    yield "unknown token", "puyu_not-a-token", True
    if (below := _lower(role)) is not None:
        yield f"{below.label} token", tokens[below], True
    yield f"{role.label} token", tokens[role], False
    yield "admin token", tokens[Role.ADMIN], False


@pytest.mark.parametrize("name", [*SERVICES, WORKER])
async def test_every_http_route_needs_its_role(
    name: str, tokens: dict[Role, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = _runtime(name, monkeypatch)
    runtime.check_declared()
    routes = [r for r in served_routes(runtime.http) if r.api and r.path not in OPEN_PATHS]
    transport = httpx.ASGITransport(app=runtime.http, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://svc", timeout=30) as http:
        for route in routes:
            assert route.role is not None
            path = re.sub(r"\{[^}]+\}", "1", route.path)
            for method in route.methods:
                for what, token, refused in _cases(route.role, tokens):
                    body = {} if method in ("POST", "PUT", "PATCH") else None
                    r = await http.request(method, path, json=body, headers=bearer(token) if token else {})
                    where = f"{name} {method} {route.path} with {what}: {r.status_code} {r.text[:200]}"
                    if refused:
                        expected = 401 if what in ("no token", "unknown token") else 403
                        assert r.status_code == expected, where
                    else:
                        assert r.status_code not in REFUSED_HTTP, where
        # open: health (its status is the bus's, down here) and metrics
        assert (await http.get("/health")).status_code in (200, 503)
        assert (await http.get("/metrics/")).status_code == 200


@pytest.mark.parametrize("name", [*SERVICES, WORKER])
async def test_every_grpc_method_needs_its_role(
    name: str, tokens: dict[Role, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = _runtime(name, monkeypatch)
    roles = runtime.grpc_roles
    # every method of every service the runtime serves has a declared role
    for service in runtime._grpc_names[1:]:
        methods = descriptor_pool.Default().FindServiceByName(service).methods
        assert {f"/{service}/{m.name}" for m in methods} <= roles.keys(), service
    server = runtime.build_grpc_server()
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{runtime.grpc_port}") as channel:
            for path, role in roles.items():
                service, method = path.strip("/").split("/")
                streaming = descriptor_pool.Default().FindMethodByName(f"{service}.{method}").server_streaming
                for what, token, refused in _cases(role, tokens):
                    code = await _call(channel, path, streaming, token)
                    where = f"{name} {path} with {what}: {code}"
                    if refused:
                        expected = (
                            grpc.StatusCode.UNAUTHENTICATED
                            if what in ("no token", "unknown token")
                            else grpc.StatusCode.PERMISSION_DENIED
                        )
                        assert code == expected, where
                    else:
                        assert code not in REFUSED_GRPC, where
            health = health_pb2_grpc.HealthStub(channel)
            await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)  # open
    finally:
        await server.stop(None)


async def _call(channel: grpc.aio.Channel, path: str, streaming: bool, token: str | None) -> grpc.StatusCode:
    """Call with an empty request (the default message); the status it ends with."""
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    identity = lambda b: b  # noqa: E731 - raw bytes both ways
    try:
        if streaming:
            call = channel.unary_stream(path, request_serializer=identity, response_deserializer=identity)(
                b"", metadata=metadata, timeout=10
            )
            async for _ in call:
                break
            call.cancel()
        else:
            await channel.unary_unary(path, request_serializer=identity, response_deserializer=identity)(
                b"", metadata=metadata, timeout=10
            )
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def test_a_route_or_method_without_a_role_is_refused_at_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    runtime = ServiceRuntime("model_registry", http_app=FastAPI())
    runtime.http.add_api_route("/v1/declared", lambda: {}, dependencies=[requires(Role.READER)])
    runtime.check_declared()
    runtime.http.add_api_route("/v1/forgotten", lambda: {})
    with pytest.raises(RuntimeError, match="GET /v1/forgotten"):
        runtime.check_declared()

    from contracts.proto.puyu.jobs.v1 import jobs_pb2_grpc

    class HalfDeclared(jobs_pb2_grpc.JobsServicer):
        @rpc_role(Role.OPERATOR)
        async def Submit(self, request, context):  # type: ignore[no-untyped-def]
            raise NotImplementedError

        async def Get(self, request, context):  # type: ignore[no-untyped-def]
            raise NotImplementedError

    with pytest.raises(UndeclaredRole, match="Get"):
        runtime.add_grpc(jobs_pb2_grpc.add_JobsServicer_to_server, HalfDeclared(), "puyu.jobs.v1.Jobs")
