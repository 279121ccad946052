"""The agent loop, HTTP API and gRPC API against a real HTTP gateway serving a scripted policy."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from contracts.proto.puyu.agent.v1 import agent_pb2, agent_pb2_grpc
from services.agent_runtime.core import AgentRuntime
from services.agent_runtime.core.agents import ReActAgent
from services.agent_runtime.core.catalog import AgentCatalog, RunOptions, react_agent
from services.agent_runtime.core.corpus import CorpusIndex, Document
from services.agent_runtime.core.llm import LLMClient
from services.agent_runtime.core.tools import Calculator, SearchCorpus, Tool
from services.agent_runtime.grpc_api import AgentsServicer, add_to_server
from services.agent_runtime.http_api import mount
from shared.natsserver import free_port

_WORDS = {"plus": "+", "minus": "-", "times": "*"}


def policy(prompt: str) -> str:
    """What a model trained on the sample transcripts does, as rules over the transcript so far."""
    question = re.search(r"Question: (.*)", prompt).group(1)  # type: ignore[union-attr]
    observations = re.findall(r"Observation: (.*)", prompt)
    if "forever" in question:
        return ' I should use the calculator.\nAction: calculator\nAction Input: {"expression": "1 + 1"}\n'
    if "oracle" in question:
        if not observations:
            return " I should ask the oracle.\nAction: oracle\nAction Input: {}\n"
        return f" I now know the final answer.\nFinal Answer: {observations[-1]}"
    if "gibberish" in question:
        return " hmm" if not observations else f"\nFinal Answer: {observations[-1]}"
    if observations:
        found = re.match(r"\[[^\]]+\] (.*)", observations[-1])
        return f" I now know the final answer.\nFinal Answer: {found.group(1) if found else observations[-1]}"
    if m := re.match(r"What is (\d+) (plus|minus|times) (\d+)\?", question):
        expr = f"{m.group(1)} {_WORDS[m.group(2)]} {m.group(3)}"
        return (
            f' I should use the calculator.\nAction: calculator\nAction Input: {{"expression": "{expr}"}}\n'
        )
    if m := re.match(r"What is the capital of (\w+)\?", question):
        return (
            f" I should search the corpus.\nAction:  search_corpus\nAction Input: capital of {m.group(1)}\n"
        )
    return " I now know the final answer.\nFinal Answer: I do not know."


@dataclass
class Gateway:
    url: str
    requests: list[dict[str, Any]] = field(default_factory=list)


@pytest.fixture
async def gateway() -> AsyncIterator[Gateway]:
    app = FastAPI()
    port = free_port()
    gw = Gateway(f"http://127.0.0.1:{port}")

    @app.post("/v1/completions")
    async def completions(body: dict[str, Any]) -> dict[str, Any]:
        gw.requests.append(body)
        if body["model"] == "missing-model":
            from fastapi import HTTPException

            raise HTTPException(404, {"message": "model missing-model is not served"})
        if "slow" in body["prompt"]:
            await asyncio.sleep(0.4)
            text = (
                ' I should use the calculator.\nAction: calculator\nAction Input: {"expression": "2 * 3"}\n'
            )
        else:
            text = policy(body["prompt"])
        return {"object": "text_completion", "model": body["model"], "choices": [{"index": 0, "text": text}]}

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    for _ in range(500):  # uvicorn offers no start-up event to wait on
        if server.started:
            break
        await asyncio.sleep(0.02)
    yield gw
    server.should_exit = True
    await task


def make_catalog(gw: Gateway) -> tuple[AgentCatalog, LLMClient]:
    index = CorpusIndex()
    index.add_documents(
        "atlas",
        [
            Document("doc-7", "The capital of Aldoria is Velm. Aldoria is known for tea."),
            Document("doc-9", "The capital of Brenmark is Holmport."),
        ],
    )
    tools: list[Tool] = [Calculator(), SearchCorpus(index, default_k=1)]
    llm = LLMClient(gw.url, timeout=10)
    catalog = AgentCatalog(llm, RunOptions(model="puyu-demo", max_steps=4))
    catalog.register(*react_agent(tools))
    return catalog, llm


async def test_react_agent_uses_the_calculator_and_answers(gateway: Gateway) -> None:
    async with LLMClient(gateway.url) as llm:
        agent = ReActAgent(llm, [Calculator()], model="puyu-demo", max_steps=4)
        steps = [s async for s in agent.run("What is 17 plus 25?")]
    assert [(s.kind, s.content) for s in steps] == [
        ("thought", "I should use the calculator."),
        ("tool_call", '{"expression": "17 + 25"}'),
        ("observation", "42"),
        ("thought", "I now know the final answer."),
        ("answer", "42"),
    ]
    assert steps[1].tool == "calculator" and steps[1].arguments == {"expression": "17 + 25"}
    assert [s.index for s in steps] == [1, 2, 3, 4, 5]
    first, second = gateway.requests
    assert first["prompt"] == "Question: What is 17 plus 25?\nThought:"
    assert first["stop"][0] == "Observation:" and first["model"] == "puyu-demo"
    # the second call sees the whole transcript, in the format the demo model was trained on
    assert second["prompt"] == (
        "Question: What is 17 plus 25?\nThought: I should use the calculator.\nAction: calculator\n"
        'Action Input: {"expression": "17 + 25"}\nObservation: 42\nThought:'
    )


async def test_agent_searches_the_corpus_with_a_bare_string_argument(gateway: Gateway) -> None:
    catalog, llm = make_catalog(gateway)
    steps = [s async for s in catalog.run("react", "What is the capital of Aldoria?")]
    await llm.aclose()
    call = next(s for s in steps if s.kind == "tool_call")
    assert call.tool == "search_corpus" and call.arguments == {"query": "capital of Aldoria"}
    assert (
        next(s for s in steps if s.kind == "observation").content == "[doc-7] The capital of Aldoria is Velm."
    )
    assert steps[-1].kind == "answer" and steps[-1].content == "The capital of Aldoria is Velm."


async def test_unknown_tool_and_bad_format_become_observations(gateway: Gateway) -> None:
    catalog, llm = make_catalog(gateway)
    steps = [s async for s in catalog.run("react", "Ask the oracle")]
    assert steps[1].kind == "error" and steps[1].tool == "oracle"
    assert steps[-1].content == "unknown tool oracle; tools are: calculator, search_corpus"
    steps = [s async for s in catalog.run("react", "Say gibberish")]
    assert steps[1].kind == "error" and "Invalid format" in steps[1].content
    assert steps[-1].kind == "answer" and "Invalid format" in steps[-1].content
    await llm.aclose()


async def test_max_steps_without_final_answer_says_so(gateway: Gateway) -> None:
    catalog, llm = make_catalog(gateway)
    steps = [s async for s in catalog.run("react", "Loop forever", max_steps=2)]
    await llm.aclose()
    assert len(gateway.requests) == 2
    assert steps[-2].kind == "error" and "no Final Answer after 2 steps" in steps[-2].content
    assert steps[-1].kind == "answer" and steps[-1].content.startswith("I should use the calculator.")


async def test_gateway_error_ends_the_run_with_a_fatal_error(gateway: Gateway) -> None:
    catalog, llm = make_catalog(gateway)
    steps = [s async for s in catalog.run("react", "What is 1 plus 1?", model="missing-model")]
    assert len(steps) == 1 and steps[0].fatal and "model missing-model is not served" in steps[0].content
    await llm.aclose()
    async with LLMClient(f"http://127.0.0.1:{free_port()}", timeout=2) as dead:
        agent = ReActAgent(dead, [Calculator()], model="m")
        steps = [s async for s in agent.run("What is 1 plus 1?")]
    assert steps[0].fatal and "unreachable" in steps[0].content


async def test_http_api(gateway: Gateway) -> None:
    catalog, llm = make_catalog(gateway)
    app = FastAPI()
    mount(app, AgentRuntime(catalog, CorpusIndex()))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://agent") as client:
        agents = (await client.get("/v1/agents")).json()["agents"]
        assert agents[0]["name"] == "react"
        assert [t["name"] for t in agents[0]["tools"]] == ["calculator", "search_corpus"]

        r = await client.post(
            "/v1/agents/react/run", json={"question": "What is 6 times 7?", "session_id": "s1"}
        )
        body = r.json()
        assert r.status_code == 200 and body["answer"] == "42" and body["session_id"] == "s1"
        assert [s["kind"] for s in body["steps"]] == [
            "thought",
            "tool_call",
            "observation",
            "thought",
            "answer",
        ]

        async with client.stream(
            "POST", "/v1/agents/react/run", json={"question": "What is 6 times 7?", "stream": True}
        ) as resp:
            events = [json.loads(line[5:]) async for line in resp.aiter_lines() if line.startswith("data:")]
        assert [e.get("kind") for e in events] == [
            "thought",
            "tool_call",
            "observation",
            "thought",
            "answer",
            None,
        ]
        assert events[-1]["answer"] == "42"

        r = await client.post(
            "/v1/chat/completions",
            json={"model": "react", "messages": [{"role": "user", "content": "What is 20 minus 8?"}]},
        )
        assert r.json()["choices"][0]["message"] == {"role": "assistant", "content": "12"}

        r = await client.post("/v1/agents/nope/run", json={"question": "hi"})
        assert r.status_code == 404 and "unknown agent 'nope'" in r.json()["detail"]
        r = await client.post("/v1/agents/react/run", json={"question": "  "})
        assert r.status_code == 400 and "question is empty" in r.json()["detail"]
        r = await client.post(
            "/v1/agents/react/run", json={"question": "What is 1 plus 1?", "model": "missing-model"}
        )
        assert r.status_code == 502
        r = await client.post(
            "/v1/tools/calculator/run", json={"arguments": {"expression": "__import__('os')"}}
        )
        assert r.status_code == 400 and "not allowed" in r.json()["detail"]
    await llm.aclose()


async def test_grpc_run_streams_steps_and_stops_when_the_client_leaves(gateway: Gateway) -> None:
    catalog, llm = make_catalog(gateway)
    server = grpc.aio.server()
    add_to_server(AgentsServicer(AgentRuntime(catalog, CorpusIndex())), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = agent_pb2_grpc.AgentsStub(channel)
            listed = await stub.ListAgents(agent_pb2.ListAgentsRequest())
            assert [(a.name, list(a.tools)) for a in listed.agents] == [
                ("react", ["calculator", "search_corpus"])
            ]

            steps = [
                s async for s in stub.Run(agent_pb2.RunRequest(agent="react", question="What is 2 plus 3?"))
            ]
            assert [s.kind for s in steps][-1] == "answer" and steps[-1].content == "5"
            assert json.loads(steps[1].arguments_json) == {"expression": "2 + 3"}
            assert len({s.session_id for s in steps}) == 1 and steps[0].session_id

            with pytest.raises(grpc.aio.AioRpcError) as err:
                async for _ in stub.Run(agent_pb2.RunRequest(agent="nope", question="x")):
                    pass
            assert err.value.code() == grpc.StatusCode.NOT_FOUND

            gateway.requests.clear()
            call = stub.Run(agent_pb2.RunRequest(agent="react", question="slow question", max_steps=20))
            async for step in call:
                if step.kind == "observation":
                    break
            call.cancel()
            await asyncio.sleep(1.2)  # three more model calls would have happened by now
            assert len(gateway.requests) <= 2
    finally:
        await server.stop(None)
        await llm.aclose()
