"""gRPC adapter: ``puyu.agent.v1.Agents`` (Run streams each step; the run stops when the client goes away)."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator

import grpc

from contracts.proto.puyu.agent.v1 import agent_pb2, agent_pb2_grpc
from services.agent_runtime.catalog import AgentCatalog, InvalidRun, UnknownAgent
from services.agent_runtime.sessions import InvalidSession

SERVICE_NAME = "puyu.agent.v1.Agents"


class AgentsServicer(agent_pb2_grpc.AgentsServicer):
    def __init__(self, catalog: AgentCatalog) -> None:
        self.catalog = catalog

    async def Run(
        self, request: agent_pb2.RunRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[agent_pb2.AgentStep]:
        session_id = request.session_id or uuid.uuid4().hex
        try:
            steps = self.catalog.run(
                request.agent or "react",
                request.question,
                model=request.model or None,
                max_steps=request.max_steps or None,
                session_id=session_id,
            )
        except UnknownAgent as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        except (InvalidRun, InvalidSession) as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        # grpc.aio cancels this coroutine when the client cancels or disconnects; the cancellation
        # reaches the agent's pending gateway request, so no work continues for nobody
        async for step in steps:
            if step.fatal:
                await context.abort(grpc.StatusCode.UNAVAILABLE, step.content)
            yield agent_pb2.AgentStep(
                kind=step.kind,
                content=step.content,
                tool=step.tool,
                arguments_json=json.dumps(step.arguments) if step.arguments else "",
                index=step.index,
                session_id=session_id,
            )

    async def ListAgents(
        self, request: agent_pb2.ListAgentsRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.ListAgentsResponse:
        return agent_pb2.ListAgentsResponse(
            agents=[
                agent_pb2.AgentInfo(name=a.name, description=a.description, tools=[t.name for t in a.tools])
                for a in self.catalog.list()
            ]
        )


def add_to_server(servicer: AgentsServicer, server: grpc.aio.Server) -> None:
    agent_pb2_grpc.add_AgentsServicer_to_server(servicer, server)
