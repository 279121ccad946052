"""HTTP adapter: agent listing and runs (JSON or server-sent events), and an OpenAI-compatible chat API.

Listings need a reader; runs, tools and sessions an operator. A session belongs to the principal
that created it: for any other it does not exist (404)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sse_starlette import EventSourceResponse

from services.agent_runtime.core import AgentFailed, AgentRefusal, AgentRun, AgentRuntime, Message, NotFound
from services.agent_runtime.core.catalog import MAX_STEPS_LIMIT
from services.agent_runtime.core.sessions import StoredTurn
from services.agent_runtime.core.tools.base import Tool, tool_schema
from shared.auth import Principal, Role
from shared.auth.http import requires

READ = requires(Role.READER)
OPERATE = requires(Role.OPERATOR)


# ---------------------------------------------------------------------------------------------- requests
class RunBody(BaseModel):
    question: str = Field(min_length=1)
    session_id: str | None = None
    model: str | None = None
    max_steps: int | None = Field(default=None, ge=1, le=MAX_STEPS_LIMIT)
    stream: bool = False


class ToolBody(BaseModel):
    arguments: dict[str, Any] = Field(default_factory=dict)


class ChatMessage(BaseModel):
    role: str
    content: str | None = None


class ChatBody(BaseModel):
    model: str = Field(description="The agent's name.")
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    max_steps: int | None = Field(default=None, ge=1, le=MAX_STEPS_LIMIT)


# ---------------------------------------------------------------------------------------------- responses
class AgentOut(BaseModel):
    name: str
    description: str
    tools: list[dict[str, Any]] = Field(description="The OpenAI function declarations of its tools.")


class AgentList(BaseModel):
    agents: list[AgentOut]


class ModelOut(BaseModel):
    id: str
    object: str = "model"
    owned_by: str = "puyu"


class ModelList(BaseModel):
    object: str = "list"
    data: list[ModelOut]


class ToolList(BaseModel):
    tools: list[dict[str, Any]]


class ToolOutput(BaseModel):
    tool: str
    output: str


class SessionOut(BaseModel):
    session_id: str
    turns: list[StoredTurn]


class SessionDeleted(BaseModel):
    session_id: str
    deleted: bool


class RunOut(BaseModel):
    agent: str
    session_id: str | None
    model: str
    steps: list[dict[str, Any]]
    answer: str | None


class ChatChoice(BaseModel):
    index: int = 0
    finish_reason: str = "stop"
    message: ChatMessage


class ChatCompletion(BaseModel):
    id: str
    object: str = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    puyu_steps: list[dict[str, Any]]


# ---------------------------------------------------------------------------------------------- routes
def make_router(core: AgentRuntime) -> APIRouter:
    router = APIRouter()
    for add_routes in (_listings, _tools, _sessions, _runs):
        add_routes(router, core)
    return router


def _listings(router: APIRouter, core: AgentRuntime) -> None:
    @router.get("/v1/agents", dependencies=[READ])
    async def list_agents() -> AgentList:
        return AgentList(
            agents=[
                AgentOut(name=a.name, description=a.description, tools=_declared(a.tools))
                for a in core.agents()
            ]
        )

    @router.get("/v1/models", dependencies=[READ])
    async def list_models() -> ModelList:
        # OpenAI clients list models first: here the models are the agents
        return ModelList(data=[ModelOut(id=a.name) for a in core.agents()])


def _tools(router: APIRouter, core: AgentRuntime) -> None:
    @router.get("/v1/tools", dependencies=[READ])
    async def list_tools() -> ToolList:
        return ToolList(tools=_declared(core.tools().values()))

    @router.post("/v1/tools/{name}/run", dependencies=[OPERATE])
    async def run_tool(name: str, body: ToolBody) -> ToolOutput:
        """Call one tool directly (what an agent's tool call does), e.g. to check the corpus index."""
        return ToolOutput(tool=name, output=await core.run_tool(name, body.arguments))


def _sessions(router: APIRouter, core: AgentRuntime) -> None:
    @router.get("/v1/sessions/{session_id}")
    async def get_session(session_id: str, principal: Principal = READ) -> SessionOut:
        turns = await core.session_turns(session_id, owner=principal.name)
        return SessionOut(session_id=session_id, turns=turns)

    @router.delete("/v1/sessions/{session_id}")
    async def delete_session(session_id: str, principal: Principal = OPERATE) -> SessionDeleted:
        deleted = await core.delete_session(session_id, owner=principal.name)
        return SessionDeleted(session_id=session_id, deleted=deleted)


def _runs(router: APIRouter, core: AgentRuntime) -> None:
    @router.post("/v1/agents/{name}/run", response_model=None)
    async def run_agent(
        name: str, body: RunBody, principal: Principal = OPERATE
    ) -> RunOut | EventSourceResponse:
        run = await core.start_owned(
            name,
            body.question,
            owner=principal.name,
            session_id=body.session_id,
            model=body.model,
            max_steps=body.max_steps,
        )
        if body.stream:
            return EventSourceResponse(_step_events(run))
        result = await run.result()
        steps = [s.to_dict() for s in result.steps]
        return RunOut(
            agent=name, session_id=run.session_id, model=run.model, steps=steps, answer=result.answer
        )

    @router.post("/v1/chat/completions", response_model=None, dependencies=[OPERATE])
    async def chat_completions(body: ChatBody) -> ChatCompletion | EventSourceResponse:
        run = core.start_chat(body.model, [Message(m.role, m.content) for m in body.messages], body.max_steps)
        completion_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if body.stream:
            return EventSourceResponse(_chat_chunks(run, completion_id, created, body.model))
        result = await run.result()
        return ChatCompletion(
            id=completion_id,
            created=created,
            model=body.model,
            choices=[ChatChoice(message=ChatMessage(role="assistant", content=result.answer or ""))],
            puyu_steps=[s.to_dict() for s in result.steps],
        )


def _declared(tools: Iterable[Tool]) -> list[dict[str, Any]]:
    return [tool_schema(t)["function"] for t in tools]


async def _step_events(run: AgentRun) -> AsyncIterator[dict[str, str]]:
    async for step in run:  # cancelled when the client goes away
        yield {"event": "step", "data": json.dumps({**step.to_dict(), "session_id": run.session_id})}
    yield {"event": "done", "data": json.dumps({"answer": run.answer, "session_id": run.session_id})}


async def _chat_chunks(run: AgentRun, completion_id: str, created: int, model: str) -> AsyncIterator[str]:
    """OpenAI's streamed chat: the role, then the answer (or the fatal error) as content, then stop."""

    def chunk(delta: dict[str, str], finish: str | None = None) -> str:
        return json.dumps(
            {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
        )

    yield chunk({"role": "assistant"})
    async for step in run:
        if step.kind == "answer" or step.fatal:
            yield chunk({"content": step.content})
    yield chunk({}, "stop")
    yield "[DONE]"


async def _refused(request: Request, exc: Exception) -> JSONResponse:
    status = 404 if isinstance(exc, NotFound) else 400
    return JSONResponse({"detail": str(exc)}, status_code=status)


async def _failed(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=502)  # the model endpoint failed, not the caller


def mount(app: FastAPI, core: AgentRuntime) -> None:
    """The routes, and the answers to the core's refusals (404 or 400) and failed runs (502)."""
    app.include_router(make_router(core))
    app.add_exception_handler(AgentRefusal, _refused)
    app.add_exception_handler(AgentFailed, _failed)
