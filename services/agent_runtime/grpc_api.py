"""gRPC adapter: ``puyu.agent.v1.Agents`` (Run streams each step; the run stops when the client goes away).

Run needs an operator and runs in a session of the caller's own (another's is NOT_FOUND)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import grpc

from contracts.proto.puyu.agent.v1 import agent_pb2, agent_pb2_grpc
from services.agent_runtime.core import AgentRefusal, AgentRun, AgentRuntime, NotFound
from shared.auth import Role
from shared.auth.grpc import current_principal, rpc_role

SERVICE_NAME = "puyu.agent.v1.Agents"
DEFAULT_AGENT = "react"  # what a request naming no agent gets


class AgentsServicer(agent_pb2_grpc.AgentsServicer):
    def __init__(self, core: AgentRuntime) -> None:
        self.core = core

    @rpc_role(Role.OPERATOR)
    async def Run(
        self, request: agent_pb2.RunRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[agent_pb2.AgentStep]:
        run = await self._start(request, context)
        # grpc.aio cancels this coroutine when the client cancels or disconnects; the cancellation
        # reaches the agent's pending gateway request, so no work continues for nobody
        async for step in run:
            if step.fatal:
                await context.abort(grpc.StatusCode.UNAVAILABLE, step.content)
            yield agent_pb2.AgentStep(
                kind=step.kind,
                content=step.content,
                tool=step.tool,
                arguments_json=json.dumps(step.arguments) if step.arguments else "",
                index=step.index,
                session_id=run.session_id or "",
            )

    async def _start(self, request: agent_pb2.RunRequest, context: grpc.aio.ServicerContext) -> AgentRun:
        try:
            return await self.core.start_owned(
                request.agent or DEFAULT_AGENT,
                request.question,
                owner=current_principal().name,
                session_id=request.session_id or None,
                model=request.model or None,
                max_steps=request.max_steps or None,
            )
        except NotFound as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        except AgentRefusal as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        raise AssertionError("unreachable: context.abort raises")

    @rpc_role(Role.READER)
    async def ListAgents(
        self, request: agent_pb2.ListAgentsRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.ListAgentsResponse:
        return agent_pb2.ListAgentsResponse(
            agents=[
                agent_pb2.AgentInfo(name=a.name, description=a.description, tools=[t.name for t in a.tools])
                for a in self.core.agents()
            ]
        )


def add_to_server(servicer: AgentsServicer, server: grpc.aio.Server) -> None:
    agent_pb2_grpc.add_AgentsServicer_to_server(servicer, server)
