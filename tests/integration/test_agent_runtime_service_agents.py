"""The running agent runtime (real nats-server, HTTP, gRPC) with a scripted model behind an HTTP gateway:
a corpus arrives by event, the planner answers from it with citations over gRPC, the ReAct agent runs
python in the sandbox over SSE, a session remembers across a restart, and user tools load from a file."""

from __future__ import annotations

import asyncio
import gzip
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from contracts.events import CorpusDeduplicated, DatasetRef
from contracts.proto.puyu.agent.v1 import agent_pb2, agent_pb2_grpc
from services.agent_runtime.app import create_service
from services.agent_runtime.config import AgentRuntimeSettings
from services.agent_runtime.core import AgentRuntime
from shared.bus import Bus
from shared.natsserver import NatsServer, free_port
from shared.service import Service

pytestmark = pytest.mark.integration


def model(prompt: str) -> str:
    question = re.findall(r"Question: (.*)", prompt)[-1]
    if prompt.endswith("Plan:\n"):
        return "1. What is the capital of Aldoria?\n2. What is the capital of Brenmark?\n"
    if prompt.endswith("Answer:"):  # planner: answer from the first passage shown
        first = re.search(r"^\[(\d+)\] The capital of \w+ is (\w+)\.", prompt, re.MULTILINE)
        if question.startswith("What is the capital") and first:
            return f" {first.group(2)}"
        cites = re.findall(r"^\[(\d+)\]", prompt, re.MULTILINE)
        return f" Velm and Holmport [{cites[0]}][{cites[1]}]."
    if "Observation:" in prompt:
        return f" I now know the final answer.\nFinal Answer: {re.findall(r'Observation: (.*)', prompt)[-1]}"
    if question.startswith("Sum"):
        return ' I should run code.\nAction: python\nAction Input: {"code": "sum(range(1, 101))"}\n'
    if question.startswith("Read"):
        return ' I will read it.\nAction: python\nAction Input: {"code": "open(\'/etc/passwd\').read()"}\n'
    if question.startswith("Count"):
        return ' I count.\nAction: word_count\nAction Input: {"text": "a b c"}\n'
    earlier = re.findall(r"Final Answer: (.*)", prompt)
    return f" I now know the final answer.\nFinal Answer: earlier {earlier[-1] if earlier else 'none'}"


@pytest.fixture
async def gateway_url() -> AsyncIterator[str]:
    app = FastAPI()
    port = free_port()

    @app.post("/v1/completions")
    async def completions(body: dict[str, Any]) -> dict[str, Any]:
        return {"choices": [{"index": 0, "text": model(body["prompt"])}]}

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    for _ in range(500):
        if server.started:
            break
        await asyncio.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    await task


async def start(settings: AgentRuntimeSettings) -> tuple[Service[AgentRuntime], asyncio.Task[None]]:
    service = create_service(settings)
    task = asyncio.create_task(service.run())
    async with httpx.AsyncClient() as client:
        for _ in range(200):
            try:
                if (
                    await client.get(f"http://127.0.0.1:{settings.agent_http_port}/health")
                ).status_code == 200:
                    return service, task
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError("agent runtime did not start")


def write_dataset(root: Path) -> str:
    root.mkdir(parents=True)
    docs = [
        {"id": "atlas-1", "text": "The capital of Aldoria is Velm."},
        {"id": "atlas-2", "text": "The capital of Brenmark is Holmport."},
    ]
    with gzip.open(root / "s.jsonl.gz", "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(d) + "\n" for d in docs)
    shards = [{"path": (root / "s.jsonl.gz").as_uri()}]
    (root / "manifest.json").write_text(json.dumps({"dataset_id": "atlas", "documents": 2, "shards": shards}))
    return (root / "manifest.json").as_uri()


async def sse_steps(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    async with client.stream("POST", url, json={**body, "stream": True}) as resp:
        return [json.loads(line[5:]) async for line in resp.aiter_lines() if line.startswith("data:")]


async def test_agents_in_the_running_service(tmp_path: Path, gateway_url: str) -> None:
    tools_file = tmp_path / "tools.yaml"
    tools_file.write_text(
        "tools:\n  - name: word_count\n    description: Count words.\n"
        "    parameters: {type: object, properties: {text: {type: string}}, required: [text]}\n"
        "    python: print(len(args['text'].split()))\n"
    )
    with NatsServer(tmp_path / "nats") as nats:
        settings = AgentRuntimeSettings(
            home=tmp_path / "home",
            nats_url=nats.url,
            log_json=False,
            gateway_url=gateway_url,
            agent_grpc_port=free_port(),
            agent_http_port=free_port(),
            agent_embeddings="off",
            agent_tools_file=tools_file,
            # the calls' results are checked, not their speed: a slow, loaded machine (two test workers on
            # two cores) once took over the default 10 s to start a sandboxed interpreter
            agent_sandbox_timeout_s=60,
        )
        service, task = await start(settings)
        http = f"http://127.0.0.1:{settings.agent_http_port}"
        try:
            bus = Bus(nats.url, "test-publisher")
            await bus.start()
            ref = DatasetRef(
                dataset_id="atlas", manifest_uri=write_dataset(tmp_path / "atlas"), digest="0" * 64
            )
            await bus.publish(
                CorpusDeduplicated(
                    job_id="j",
                    source=ref,
                    dataset=ref,
                    documents_in=2,
                    documents_out=2,
                    exact_duplicates=0,
                    near_duplicates=0,
                )
            )
            await bus.stop()
            async with httpx.AsyncClient(timeout=30) as client:
                for _ in range(150):  # the event is handled asynchronously
                    r = await client.post(
                        f"{http}/v1/tools/search_corpus/run", json={"arguments": {"query": "Velm"}}
                    )
                    if r.json()["output"].startswith("[atlas-1]"):
                        break
                    await asyncio.sleep(0.1)
                agents = {a["name"]: a for a in (await client.get(f"{http}/v1/agents")).json()["agents"]}
                assert {t["name"] for t in agents["react"]["tools"]} == {
                    "calculator",
                    "search_corpus",
                    "python",
                    "web_search",
                    "word_count",
                }

                steps = await sse_steps(client, f"{http}/v1/agents/react/run", {"question": "Sum 1 to 100"})
                assert [s.get("kind") for s in steps][:3] == ["thought", "tool_call", "observation"]
                assert steps[2]["content"] == "5050" and steps[-1]["answer"] == "5050"
                steps = await sse_steps(
                    client, f"{http}/v1/agents/react/run", {"question": "Read the passwords"}
                )
                assert "outside the working directory is not allowed" in steps[2]["content"]
                r = await client.post(f"{http}/v1/agents/react/run", json={"question": "Count words"})
                assert r.json()["answer"] == "3"
                r = await client.post(f"{http}/v1/tools/web_search/run", json={"arguments": {"query": "x"}})
                assert r.status_code == 400 and "web search is not configured" in r.json()["detail"]
                r = await client.post(
                    f"{http}/v1/agents/react/run", json={"question": "Count words", "session_id": "s-1"}
                )
                assert r.json()["answer"] == "3"

            async with grpc.aio.insecure_channel(f"127.0.0.1:{settings.agent_grpc_port}") as channel:
                stub = agent_pb2_grpc.AgentsStub(channel)
                request = agent_pb2.RunRequest(agent="planner", question="Both capitals?")
                planned = [s async for s in stub.Run(request)]
            assert planned[0].kind == "plan" and planned[-1].kind == "answer"
            answer, sources = planned[-1].content.split("\nSources: ")
            # the two searches run concurrently: either may be cited first
            assert answer == "Velm and Holmport [1][2]."
            assert sources in ("[1] atlas-1; [2] atlas-2", "[1] atlas-2; [2] atlas-1")
            assert sum(s.kind == "tool_call" for s in planned) == 2
        finally:
            service.stop()
            await task

        # the session outlives the process
        settings.agent_http_port, settings.agent_grpc_port = free_port(), free_port()
        service, task = await start(settings)
        try:
            async with httpx.AsyncClient(timeout=30) as client:
                r = await client.post(
                    f"http://127.0.0.1:{settings.agent_http_port}/v1/agents/react/run",
                    json={"question": "What did you say?", "session_id": "s-1"},
                )
                assert r.json()["answer"] == "earlier 3"
        finally:
            service.stop()
            await task
