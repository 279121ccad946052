"""HTTP adapter: agent listing and runs (JSON or server-sent events), and an OpenAI-compatible chat API."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, FastAPI, HTTPException
from pydantic import BaseModel, Field
from sse_starlette import EventSourceResponse

from services.agent_runtime.agents.base import AgentStep, Turn
from services.agent_runtime.catalog import MAX_STEPS_LIMIT, AgentCatalog, InvalidRun, UnknownAgent
from services.agent_runtime.sessions import InvalidSession
from services.agent_runtime.tools.base import ToolError, tool_schema, validate_args


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


def _start(
    catalog: AgentCatalog,
    name: str,
    question: str,
    model: str | None,
    max_steps: int | None,
    session_id: str | None = None,
    history: list[Turn] | None = None,
) -> AsyncIterator[AgentStep]:
    try:
        return catalog.run(
            name, question, model=model, max_steps=max_steps, session_id=session_id, history=history or ()
        )
    except UnknownAgent as exc:
        raise HTTPException(404, str(exc)) from None
    except (InvalidRun, InvalidSession) as exc:
        raise HTTPException(400, str(exc)) from None


def _chat_history(messages: list[ChatMessage]) -> list[Turn]:
    """Earlier (user, assistant) pairs of an OpenAI conversation: the caller carries the memory."""
    turns: list[Turn] = []
    pending: str | None = None
    for m in messages[:-1]:
        if m.role == "user" and m.content:
            pending = m.content
        elif m.role == "assistant" and m.content and pending is not None:
            turns.append(Turn(pending, m.content))
            pending = None
    return turns


def _answer(steps: list[AgentStep]) -> str | None:
    return next((s.content for s in reversed(steps) if s.kind == "answer"), None)


def _fatal(steps: list[AgentStep]) -> AgentStep | None:
    return next((s for s in steps if s.fatal), None)


def build_router(catalog: AgentCatalog) -> APIRouter:
    router = APIRouter()

    @router.get("/v1/agents")
    async def list_agents() -> dict[str, Any]:
        return {
            "agents": [
                {
                    "name": a.name,
                    "description": a.description,
                    "tools": [tool_schema(t)["function"] for t in a.tools],
                }
                for a in catalog.list()
            ]
        }

    @router.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        # OpenAI clients list models first: here the models are the agents
        return {
            "object": "list",
            "data": [{"id": a.name, "object": "model", "owned_by": "puyu"} for a in catalog.list()],
        }

    @router.get("/v1/tools")
    async def list_tools() -> dict[str, Any]:
        return {"tools": [tool_schema(t)["function"] for t in catalog.tools().values()]}

    @router.post("/v1/tools/{name}/run")
    async def run_tool(name: str, body: ToolBody) -> dict[str, Any]:
        """Call one tool directly (what an agent's tool_call does), e.g. to check the corpus index."""
        tool = catalog.tools().get(name)
        if tool is None:
            raise HTTPException(404, f"unknown tool {name!r}; tools are: {', '.join(catalog.tools())}")
        try:
            output = await asyncio.to_thread(tool.run, validate_args(tool, body.arguments))
        except ToolError as exc:
            raise HTTPException(400, str(exc)) from None
        return {"tool": name, "output": output}

    @router.get("/v1/sessions/{session_id}")
    async def get_session(session_id: str) -> dict[str, Any]:
        if catalog.sessions is None:
            raise HTTPException(404, "sessions are not kept by this runtime")
        try:
            turns = await asyncio.to_thread(catalog.sessions.turns, session_id)
        except InvalidSession as exc:
            raise HTTPException(400, str(exc)) from None
        if not turns:
            raise HTTPException(404, f"no session {session_id!r}")
        return {"session_id": session_id, "turns": [t.__dict__ for t in turns]}

    @router.delete("/v1/sessions/{session_id}")
    async def delete_session(session_id: str) -> dict[str, Any]:
        if catalog.sessions is None:
            raise HTTPException(404, "sessions are not kept by this runtime")
        try:
            deleted = await asyncio.to_thread(catalog.sessions.delete, session_id)
        except InvalidSession as exc:
            raise HTTPException(400, str(exc)) from None
        return {"session_id": session_id, "deleted": deleted}

    @router.post("/v1/agents/{name}/run", response_model=None)
    async def run_agent(name: str, body: RunBody) -> dict[str, Any] | EventSourceResponse:
        session_id = body.session_id or uuid.uuid4().hex
        steps_iter = _start(catalog, name, body.question, body.model, body.max_steps, session_id)
        model = body.model or catalog.defaults.model
        if body.stream:

            async def events() -> AsyncIterator[dict[str, str]]:
                answer = None
                async for step in steps_iter:  # cancelled when the client goes away
                    answer = step.content if step.kind == "answer" else answer
                    yield {"event": "step", "data": json.dumps({**step.to_dict(), "session_id": session_id})}
                yield {"event": "done", "data": json.dumps({"answer": answer, "session_id": session_id})}

            return EventSourceResponse(events())
        steps = [s async for s in steps_iter]
        fatal = _fatal(steps)
        if fatal is not None:
            raise HTTPException(502, fatal.content)
        return {
            "agent": name,
            "session_id": session_id,
            "model": model,
            "steps": [s.to_dict() for s in steps],
            "answer": _answer(steps),
        }

    @router.post("/v1/chat/completions", response_model=None)
    async def chat_completions(body: ChatBody) -> dict[str, Any] | EventSourceResponse:
        last = body.messages[-1]
        if last.role != "user" or not last.content:
            raise HTTPException(400, "the last message must be a user message with content")
        steps_iter = _start(
            catalog, body.model, last.content, None, body.max_steps, None, _chat_history(body.messages)
        )
        completion_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if body.stream:

            async def chunks() -> AsyncIterator[str]:
                def chunk(delta: dict[str, str], finish: str | None = None) -> str:
                    return json.dumps(
                        {
                            "id": completion_id,
                            "object": "chat.completion.chunk",
                            "created": created,
                            "model": body.model,
                            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                        }
                    )

                yield chunk({"role": "assistant"})
                async for step in steps_iter:
                    if step.kind == "answer" or step.fatal:
                        yield chunk({"content": step.content})
                yield chunk({}, "stop")
                yield "[DONE]"

            return EventSourceResponse(chunks())
        steps = [s async for s in steps_iter]
        fatal = _fatal(steps)
        if fatal is not None:
            raise HTTPException(502, fatal.content)
        return {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": body.model,
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": _answer(steps) or ""},
                }
            ],
            "puyu_steps": [s.to_dict() for s in steps],
        }

    return router


def mount(app: FastAPI, catalog: AgentCatalog) -> None:
    app.include_router(build_router(catalog))
