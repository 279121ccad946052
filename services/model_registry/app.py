"""Wires the registry core, its database, the outbox relay and the adapters onto a ServiceRuntime."""

from __future__ import annotations

import asyncio

from contracts.proto.puyu.registry.v1 import registry_pb2_grpc
from services.model_registry.config import RegistrySettings
from services.model_registry.core.database import make_engine, migrate
from services.model_registry.core.registry import Registry
from services.model_registry.grpc_api import SERVICE_NAME, RegistryServicer
from services.model_registry.handlers import register_handlers
from services.model_registry.http_api import make_router
from services.model_registry.relay import OutboxRelay
from shared.service import Service, ServiceRuntime

NAME = "model_registry"


def create_service(settings: RegistrySettings | None = None) -> Service[Registry]:
    settings = settings or RegistrySettings()
    runtime = ServiceRuntime(
        NAME,
        settings,
        grpc_port_override=settings.registry_grpc_port,
        http_port_override=settings.registry_http_port,
    )
    engine = make_engine(settings.registry_database_url, schema=settings.registry_db_schema)
    registry = Registry(
        engine,
        settings.load_policy(),
        source=runtime.bus.service,
        consumer=NAME,
        artifact_root=settings.artifact_root_uri,
    )
    relay = OutboxRelay(registry, runtime.bus, settings.registry_outbox_interval)
    register_handlers(runtime.bus, registry, settings)
    runtime.add_grpc(
        registry_pb2_grpc.add_ModelRegistryServicer_to_server, RegistryServicer(registry), SERVICE_NAME
    )
    runtime.http.include_router(make_router(registry))

    @runtime.on_start
    async def _start() -> None:
        await asyncio.to_thread(migrate, engine)
        relay.start()  # sweeps once the bus is up: everything left unpublished goes out first

    @runtime.on_stop
    async def _stop() -> None:
        await relay.stop()
        engine.dispose()

    return Service(runtime, registry)
