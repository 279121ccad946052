"""Authentication on gRPC: one server interceptor, roles declared on the servicer methods.

A servicer method declares its role with ``@rpc_role(Role.X)``; ``ServiceRuntime.add_grpc`` reads
them for every method of the service's proto descriptor and refuses to start when one is missing.
The interceptor checks the ``authorization`` metadata (``Bearer <token>``) with the same
``Authenticator`` as HTTP and hands the principal to the method (``current_principal()``). The
health and reflection services stay open.
"""

from __future__ import annotations

import contextvars
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import descriptor_pool

from shared.auth.authenticator import Authenticator
from shared.auth.principals import ANONYMOUS, PermissionDenied, Principal, Role, Unauthenticated

F = TypeVar("F", bound=Callable[..., Any])
ROLE_ATTR = "__puyu_role__"
OPEN_SERVICES = frozenset({"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"})
_principal: contextvars.ContextVar[Principal] = contextvars.ContextVar("puyu_principal")


def rpc_role(role: Role) -> Callable[[F], F]:
    """Declare the role a servicer method needs."""

    def mark(fn: F) -> F:
        setattr(fn, ROLE_ATTR, role)
        return fn

    return mark


def current_principal() -> Principal:
    """Who called the RPC being served (each RPC runs in its own task, so its own context)."""
    return _principal.get(ANONYMOUS)


class UndeclaredRole(RuntimeError):
    """A servicer method with no declared role: the service refuses to start with it."""


def servicer_roles(servicer: Any, full_name: str) -> dict[str, Role]:
    """``/package.Service/Method`` → the role its servicer method declares, for every method of
    the proto service; raises UndeclaredRole naming each method without one."""
    service = descriptor_pool.Default().FindServiceByName(full_name)
    roles, missing = {}, []
    for method in service.methods:
        fn = getattr(type(servicer), method.name, None)
        role = getattr(fn, ROLE_ATTR, None)
        if role is None and fn is not None and fn.__module__.endswith("_pb2_grpc"):
            role = Role.ADMIN  # not implemented here (the generated stub answers UNIMPLEMENTED)
        if role is None:
            missing.append(method.name)
        else:
            roles[f"/{full_name}/{method.name}"] = role
    if missing:
        raise UndeclaredRole(f"{full_name}: no role declared for {', '.join(missing)} (use @rpc_role)")
    return roles


class AuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, authenticator: Authenticator, roles: dict[str, Role]) -> None:
        self.authenticator = authenticator
        self.roles = roles

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method = details.method
        if handler is None or method.split("/")[1] in OPEN_SERVICES:
            return handler
        role = self.roles.get(method)
        if role is None:  # registered outside add_grpc: closed
            return _refusing(handler, grpc.StatusCode.PERMISSION_DENIED, f"{method}: no role declared")
        metadata = {str(k).lower(): v for k, v in (details.invocation_metadata or ())}
        authorization = metadata.get("authorization")
        try:
            principal = self.authenticator.authorize(
                authorization.decode() if isinstance(authorization, bytes) else authorization, role
            )
        except Unauthenticated as exc:
            return _refusing(handler, grpc.StatusCode.UNAUTHENTICATED, str(exc))
        except PermissionDenied as exc:
            return _refusing(handler, grpc.StatusCode.PERMISSION_DENIED, str(exc))
        return _as(handler, principal)


def _rebuild(handler: grpc.RpcMethodHandler, behaviour: Callable[..., Any]) -> grpc.RpcMethodHandler:
    kind = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }[(handler.request_streaming, handler.response_streaming)]
    return kind(
        behaviour,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def _behaviour(handler: grpc.RpcMethodHandler) -> Callable[..., Any]:
    return handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream  # type: ignore[no-any-return]


def _refusing(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    if handler.response_streaming:

        async def refuse_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            await context.abort(code, message)
            yield  # an async generator, as a streaming method is

        return _rebuild(handler, refuse_stream)

    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(code, message)

    return _rebuild(handler, refuse)


def _as(handler: grpc.RpcMethodHandler, principal: Principal) -> grpc.RpcMethodHandler:
    behaviour = _behaviour(handler)
    if handler.response_streaming:

        async def serve_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            _principal.set(principal)
            result = behaviour(request, context)
            if inspect.isasyncgen(result) or hasattr(result, "__aiter__"):
                async for item in result:
                    yield item
            else:  # a coroutine writing with context.write
                await result

        return _rebuild(handler, serve_stream)

    async def serve(request: Any, context: grpc.aio.ServicerContext) -> Any:
        _principal.set(principal)
        return await behaviour(request, context)

    return _rebuild(handler, serve)
