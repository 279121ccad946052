"""The OpenAI tool-calling agent against a real HTTP server speaking the chat completions tool protocol."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI

from services.agent_runtime.core.agents.base import Turn
from services.agent_runtime.core.agents.function_calling import FunctionCallingAgent
from services.agent_runtime.core.llm import LLMClient
from services.agent_runtime.core.tools import Calculator
from shared.natsserver import free_port


def chat_model(body: dict[str, Any]) -> dict[str, Any]:
    """Calls the calculator (twice at once, one with a wrong argument) then answers from the tool messages."""
    messages = body["messages"]
    question = messages[-1]["content"] if messages[-1]["role"] == "user" else ""
    results = [m["content"] for m in messages if m["role"] == "tool"]
    if "name" in question:
        earlier = [m["content"] for m in messages if m["role"] == "assistant"]
        return {"role": "assistant", "content": f"You said: {earlier[-1]}"}
    if not results:
        assert [t["function"]["name"] for t in body["tools"]] == ["calculator"]
        calls = [
            {
                "id": "c1",
                "type": "function",
                "function": {"name": "calculator", "arguments": '{"expression": "6*7"}'},
            },
            {"id": "c2", "type": "function", "function": {"name": "calculator", "arguments": {"expr": "1"}}},
            {"id": "c3", "type": "function", "function": {"name": "shell", "arguments": "{}"}},
        ]
        return {"role": "assistant", "content": "Let me compute.", "tool_calls": calls}
    return {"role": "assistant", "content": f"The answer is {results[0]}."}


@pytest.fixture
async def endpoint() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    app = FastAPI()
    port = free_port()
    seen: list[dict[str, Any]] = []

    @app.post("/v1/chat/completions")
    async def chat(body: dict[str, Any]) -> dict[str, Any]:
        seen.append(json.loads(json.dumps(body)))
        return {"choices": [{"index": 0, "message": chat_model(body), "finish_reason": "stop"}]}

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    for _ in range(500):
        if server.started:
            break
        await asyncio.sleep(0.02)
    yield f"http://127.0.0.1:{port}", seen
    server.should_exit = True
    await task


async def test_tool_calls_run_and_results_go_back_as_tool_messages(
    endpoint: tuple[str, list[dict[str, Any]]],
) -> None:
    url, seen = endpoint
    async with LLMClient(url) as llm:
        agent = FunctionCallingAgent(llm, [Calculator()], model="m")
        steps = [s async for s in agent.run("What is 6 times 7?")]
    assert [(s.kind, s.tool) for s in steps] == [
        ("thought", ""),
        ("tool_call", "calculator"),
        ("observation", "calculator"),
        ("error", "calculator"),
        ("observation", "calculator"),
        ("error", "shell"),
        ("observation", "shell"),
        ("answer", ""),
    ]
    assert steps[1].arguments == {"expression": "6*7"} and steps[2].content == "42"
    assert "missing argument(s) expression" in steps[3].content and "unknown tool 'shell'" in steps[5].content
    assert steps[-1].content == "The answer is 42."
    second = seen[1]["messages"]
    assert second[2]["tool_calls"][0]["id"] == "c1"
    assert [(m["tool_call_id"], m["content"][:6]) for m in second[3:]] == [
        ("c1", "42"),
        ("c2", "error:"),
        ("c3", "error:"),
    ]


async def test_history_becomes_earlier_messages(endpoint: tuple[str, list[dict[str, Any]]]) -> None:
    url, seen = endpoint
    async with LLMClient(url) as llm:
        agent = FunctionCallingAgent(llm, [Calculator()], model="m")
        steps = [s async for s in agent.run("What was my name?", [Turn("I am Ada", "Hello Ada")])]
    assert steps[-1].content == "You said: Hello Ada"
    assert [m["role"] for m in seen[0]["messages"]] == ["system", "user", "assistant", "user"]
