"""The runtime every service process shares: bus, gRPC server (health + reflection), HTTP (health + metrics).

Every other HTTP route and gRPC method is authenticated (``shared.auth``): each declares the role it
needs, the runtime refuses to start when one does not, and both servers share one ``Authenticator``.
TLS is served on both when certificate files are configured.

A service builds a ``ServiceRuntime``, registers its bus handlers, gRPC servicers and HTTP routes on
it, then calls ``run()``; SIGTERM/SIGINT stop it gracefully (in-flight messages are not acked and
come back to another replica).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import grpc
import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import make_asgi_app

from shared.auth import Authenticator
from shared.auth.grpc import AuthInterceptor, servicer_roles
from shared.auth.http import install_auth, undeclared_routes
from shared.auth.principals import Role
from shared.auth.tls import grpc_server_credentials, uvicorn_tls_options
from shared.bus import Bus
from shared.logging import configure_logging
from shared.ports import grpc_port, http_port
from shared.settings import CommonSettings

log = logging.getLogger(__name__)
C = TypeVar("C")
DRAINING_HOOK_TIMEOUT = 3.0  # seconds each on_draining hook may take


class ServiceRuntime:
    def __init__(
        self,
        name: str,
        settings: CommonSettings | None = None,
        *,
        grpc_port_override: int | None = None,
        http_port_override: int | None = None,
        http_app: FastAPI | None = None,
    ) -> None:
        self.name = name
        self.settings = settings or CommonSettings()
        configure_logging(name.replace("_", "-"), self.settings.log_level, self.settings.log_json)
        self.bus = Bus(self.settings.nats_url, name.replace("_", "-"))
        self.grpc_port = grpc_port_override or grpc_port(name, self.settings)
        self.http_port = http_port_override or http_port(name, self.settings)
        # The gRPC server binds to the event loop it is created in: it is built in run(), so a
        # service can be created before asyncio.run() starts the loop.
        self.grpc_server: grpc.aio.Server | None = None
        self._grpc_servicers: list[tuple[Callable[[Any, grpc.aio.Server], None], Any]] = []
        self.health: health.aio.HealthServicer | None = None
        self._grpc_names: list[str] = [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name]
        self.auth = Authenticator.from_settings(self.settings)
        self._grpc_roles: dict[str, Role] = {}
        self.http = http_app or FastAPI(title=f"puyu {name}")
        install_auth(self.http, self.auth)
        self.http.mount("/metrics", make_asgi_app())
        self.http.add_api_route("/health", self._http_health, methods=["GET"], include_in_schema=False)
        self._on_start: list[Callable[[], Awaitable[Any]]] = []
        self._on_draining: list[Callable[[], Awaitable[Any]]] = []
        self._on_stop: list[Callable[[], Awaitable[Any]]] = []
        self._stop = asyncio.Event()

    # --------------------------------------------------------------------------- registration
    def add_grpc(
        self, add_to_server: Callable[[Any, grpc.aio.Server], None], servicer: Any, full_name: str
    ) -> None:
        self._grpc_roles.update(servicer_roles(servicer, full_name))  # UndeclaredRole: not served
        self._grpc_servicers.append((add_to_server, servicer))
        self._grpc_names.append(full_name)

    def on_start(self, fn: Callable[[], Awaitable[Any]]) -> Callable[[], Awaitable[Any]]:
        self._on_start.append(fn)
        return fn

    def on_draining(self, fn: Callable[[], Awaitable[Any]]) -> Callable[[], Awaitable[Any]]:
        """Run when a stop begins, while the bus is still up (e.g. withdraw an announcement); each
        gets ``DRAINING_HOOK_TIMEOUT`` seconds, so a lost bus cannot hold the stop."""
        self._on_draining.append(fn)
        return fn

    def on_stop(self, fn: Callable[[], Awaitable[Any]]) -> Callable[[], Awaitable[Any]]:
        self._on_stop.append(fn)
        return fn

    async def _http_health(self) -> JSONResponse:
        ok = (
            self.bus.started
            and self.bus.broker.connection is not None
            and self.bus.broker.connection.is_connected
        )
        body = {
            "service": self.name,
            "status": "ok" if ok else "degraded",
            "bus": "connected" if ok else "down",
        }
        return JSONResponse(body, status_code=200 if ok else 503)

    def check_declared(self) -> None:
        """Refuse to serve an HTTP route that declares no role (gRPC methods are checked as added)."""
        if missing := undeclared_routes(self.http):
            raise RuntimeError(f"{self.name}: HTTP routes without a declared role: {'; '.join(missing)}")

    @property
    def grpc_roles(self) -> dict[str, Role]:
        """``/package.Service/Method`` → the role it needs, for every method of the added servicers."""
        return dict(self._grpc_roles)

    def build_grpc_server(self) -> grpc.aio.Server:
        """The gRPC server, bound (TLS where configured) but not started: health, reflection and the
        added servicers behind the authentication interceptor. Called in the loop that serves it."""
        self.grpc_server = grpc_server = grpc.aio.server(
            interceptors=[AuthInterceptor(self.auth, self._grpc_roles)]
        )
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, grpc_server)
        for add_to_server, servicer in self._grpc_servicers:
            add_to_server(servicer, grpc_server)
        reflection.enable_server_reflection([*self._grpc_names, reflection.SERVICE_NAME], grpc_server)
        address = f"{self.settings.host}:{self.grpc_port}"
        credentials = grpc_server_credentials(self.settings)
        if credentials is None:
            bound = grpc_server.add_insecure_port(address)
        else:
            bound = grpc_server.add_secure_port(address, credentials)
        if not bound:
            raise RuntimeError(f"{self.name}: cannot bind gRPC port {self.grpc_port}")
        return grpc_server

    # --------------------------------------------------------------------------- lifecycle
    async def run(self) -> None:
        self.check_declared()
        if self.auth.open:
            log.warning(
                "%s: authentication is OFF (auth_required false, no tokens): anyone is admin", self.name
            )
        self._install_signal_handlers()
        grpc_server = self.build_grpc_server()
        assert self.health is not None
        health_servicer = self.health
        for fn in self._on_start:  # before the bus: handlers may need what these set up
            await fn()
        await self.bus.start()
        await grpc_server.start()
        for svc in self._grpc_names:
            await health_servicer.set(svc, health_pb2.HealthCheckResponse.SERVING)
        await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        config = uvicorn.Config(
            self.http,
            host=self.settings.host,
            port=self.http_port,
            log_level="warning",
            lifespan="off",
            **uvicorn_tls_options(self.settings),
        )
        server = uvicorn.Server(config)
        # This runtime owns SIGTERM/SIGINT (graceful stop of bus, gRPC and HTTP in order), not uvicorn.
        server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
        http_task = asyncio.create_task(server.serve())
        log.info(
            "%s ready: grpc %s:%d http %s:%d",
            self.name,
            self.settings.host,
            self.grpc_port,
            self.settings.host,
            self.http_port,
        )
        try:
            await self._stop.wait()
        finally:
            log.info("%s stopping", self.name)
            await health_servicer.enter_graceful_shutdown()
            server.should_exit = True
            for fn in self._on_draining:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(fn(), DRAINING_HOOK_TIMEOUT)
            await self.bus.stop()
            for fn in self._on_stop:
                with contextlib.suppress(Exception):
                    await fn()
            await grpc_server.stop(grace=5)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(http_task, 10)

    def stop(self) -> None:
        self._stop.set()

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, self.stop)


@dataclass
class Service(Generic[C]):
    """What every ``create_service()`` returns: the runtime that runs the process, and the core it
    serves (typed, so the CLI and tests reach the core without attributes set on the runtime)."""

    runtime: ServiceRuntime
    core: C

    async def run(self) -> None:
        await self.runtime.run()

    def stop(self) -> None:
        self.runtime.stop()
