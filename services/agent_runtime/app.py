"""Wires the agent runtime's core (agents, tools, corpus index) and its adapters onto a ServiceRuntime."""

from __future__ import annotations

import asyncio

from services.agent_runtime.config import AgentRuntimeSettings
from services.agent_runtime.core import AgentRuntime, build_runtime
from services.agent_runtime.grpc_api import SERVICE_NAME, AgentsServicer, add_to_server
from services.agent_runtime.handlers import register_handlers
from services.agent_runtime.http_api import mount
from shared.service import Service, ServiceRuntime

NAME = "agent_runtime"


def create_service(settings: AgentRuntimeSettings | None = None) -> Service[AgentRuntime]:
    settings = settings or AgentRuntimeSettings()
    runtime = ServiceRuntime(
        NAME,
        settings,
        grpc_port_override=settings.agent_grpc_port,
        http_port_override=settings.agent_http_port,
    )
    core = build_runtime(settings)
    register_handlers(runtime.bus, core, settings)
    runtime.add_grpc(add_to_server, AgentsServicer(core), SERVICE_NAME)
    mount(runtime.http, core)

    @runtime.on_start
    async def restore_index() -> None:  # before the bus: recorded datasets first, then new events
        await asyncio.to_thread(core.restore_index)

    @runtime.on_stop
    async def close() -> None:
        await core.aclose()

    return Service(runtime, core)
