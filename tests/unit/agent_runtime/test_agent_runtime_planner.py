"""The planner-searcher against a real HTTP gateway serving a scripted model, and a real corpus index."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from services.agent_runtime.core import AgentRuntime
from services.agent_runtime.core.agents.planner import PlannerAgent, parse_plan
from services.agent_runtime.core.catalog import AgentCatalog, RunOptions, planner_agent
from services.agent_runtime.core.corpus import CorpusIndex, Document
from services.agent_runtime.core.llm import LLMClient
from services.agent_runtime.core.searchers import CorpusSearcher
from services.agent_runtime.core.tools import SearchCorpus
from services.agent_runtime.http_api import mount
from shared.natsserver import free_port

CORPUS = [
    Document("atlas-1", "The capital of Aldoria is Velm."),
    Document("atlas-2", "The capital of Brenmark is Holmport."),
    Document("census-4", "Velm has 120000 people living in it."),
    Document("census-5", "Holmport has 80000 people living in it."),
]


def planning_model(prompt: str) -> str:
    """A model that plans, answers sub-questions from the passages and cites them."""
    if prompt.endswith("Plan:\n"):
        q = prompt.rsplit("Question: ", 1)[1]
        if "more people" in q:
            return (
                "1. What is the capital of Aldoria?\n2. What is the capital of Brenmark?\n"
                "3. How many people live there? [after 1]\n4. How many people live there? [after 2]\n"
            )
        return "I think the answer is obvious."  # no plan: the question itself is searched
    question = prompt.rsplit("Question: ", 1)[1].removesuffix("\nAnswer:")
    passages = dict(re.findall(r"^\[(\d+)\] (.*)$", prompt, re.MULTILINE))
    if question.startswith("What is the capital"):
        hit = next(t for t in passages.values() if question.split()[-1].rstrip("?") in t)
        return " " + hit.rsplit(" ", 1)[1].rstrip(".")
    if question.startswith("How many"):
        known = re.findall(r"^Known: .* (\w+)$", prompt, re.MULTILINE)[0]
        hit = next(t for t in passages.values() if t.startswith(known))
        return " " + hit.split()[2]
    cites = [n for n, t in passages.items() if "people living" in t]
    return f" Aldoria's capital Velm is larger [{cites[0]}][{cites[1]}]."


@dataclass
class Gateway:
    url: str
    policy: Callable[[str], str]
    prompts: list[str] = field(default_factory=list)
    in_flight: int = 0
    most_in_flight: int = 0


@pytest.fixture
async def gateway() -> AsyncIterator[Gateway]:
    app = FastAPI()
    port = free_port()
    gw = Gateway(f"http://127.0.0.1:{port}", planning_model)

    @app.post("/v1/completions")
    async def completions(body: dict[str, Any]) -> dict[str, Any]:
        gw.prompts.append(body["prompt"])
        gw.in_flight += 1
        gw.most_in_flight = max(gw.most_in_flight, gw.in_flight)
        try:
            await asyncio.sleep(0.05)  # long enough for concurrent sub-questions to overlap
            return {"choices": [{"index": 0, "text": gw.policy(body["prompt"])}]}
        finally:
            gw.in_flight -= 1

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    for _ in range(500):
        if server.started:
            break
        await asyncio.sleep(0.02)
    yield gw
    server.should_exit = True
    await task


def make_agent(llm: LLMClient) -> PlannerAgent:
    index = CorpusIndex()
    index.add_documents("world", CORPUS)
    return PlannerAgent(llm, [CorpusSearcher(SearchCorpus(index))], model="m", top_k=1)


def test_parse_plan_keeps_an_acyclic_graph() -> None:
    nodes, notes = parse_plan(
        "Here is my plan:\n1. Capital of Aldoria?\n2) Population of it? [after 1]\n"
        "3. Which is older? [after 2, 4]\n1. Duplicate?\n- 4: Weather there [depends on 3]\nnonsense\n",
        max_nodes=10,
    )
    assert [(n.id, n.question, n.depends_on) for n in nodes] == [
        (1, "Capital of Aldoria?", []),
        (2, "Population of it?", [1]),
        (3, "Which is older?", [2]),
        (4, "Weather there", [3]),
    ]
    assert any("dependency 4 is not an earlier" in n for n in notes) and any("twice" in n for n in notes)
    assert parse_plan("\n".join(f"{i}. question {i}" for i in range(1, 9)), 3)[0][-1].id == 3


async def test_planner_answers_sub_questions_concurrently_and_cites_sources(gateway: Gateway) -> None:
    async with LLMClient(gateway.url) as llm:
        steps = [
            s async for s in make_agent(llm).run("Which capital has more people, Aldoria's or Brenmark's?")
        ]
    plan = steps[0]
    assert plan.kind == "plan" and [n["depends_on"] for n in plan.arguments["nodes"]] == [[], [], [1], [2]]
    sub = {s.arguments["node"]: s.content for s in steps if s.kind == "thought"}
    assert sub == {
        1: "1. What is the capital of Aldoria? → Velm",
        2: "2. What is the capital of Brenmark? → Holmport",
        3: "3. How many people live there? → 120000",
        4: "4. How many people live there? → 80000",
    }
    # a dependent sub-question is searched with its parent's answer
    queries = {s.arguments["node"]: s.arguments["query"] for s in steps if s.kind == "tool_call"}
    assert queries[3] == "How many people live there? Velm"
    assert gateway.most_in_flight >= 2  # independent sub-questions were asked at the same time
    answer = steps[-1]
    # citations are numbered as passages arrive: concurrent searches may finish in either order
    refs = {s["ref"]: s["n"] for s in answer.arguments["sources"]}
    assert set(refs) == {"census-4", "census-5"} and set(refs.values()) == {3, 4}
    assert answer.kind == "answer" and answer.content.startswith("Aldoria's capital Velm is larger [")
    third, fourth = sorted(refs, key=lambda ref: refs[ref])
    assert answer.content.endswith(f"Sources: [3] {third}; [4] {fourth}")
    assert [s.index for s in steps] == list(range(1, len(steps) + 1))


async def test_planner_without_a_usable_plan_searches_the_question(gateway: Gateway) -> None:
    gateway.policy = lambda p: "" if not p.endswith("Plan:\n") else "no plan here"
    async with LLMClient(gateway.url) as llm:
        steps = [s async for s in make_agent(llm).run("What is the capital of Brenmark?")]
    assert steps[0].arguments["notes"] == [
        "the model wrote no usable plan; searching for the question itself"
    ]
    assert steps[1].kind == "tool_call" and steps[1].arguments["query"] == "What is the capital of Brenmark?"
    # the model wrote nothing: the best passage is the sub-answer, and the answer cites it
    assert steps[-1].content == "The capital of Brenmark is Holmport.\nSources: [1] atlas-2"


async def test_planner_gateway_failure_is_fatal_and_stops(gateway: Gateway) -> None:
    async with LLMClient(f"http://127.0.0.1:{free_port()}", timeout=2) as dead:
        steps = [s async for s in make_agent(dead).run("anything")]
    assert len(steps) == 1 and steps[0].fatal and "unreachable" in steps[0].content


async def test_a_failing_sub_question_ends_the_run_with_a_fatal_error(gateway: Gateway) -> None:
    def policy(prompt: str) -> str:
        if "Brenmark" in prompt and prompt.endswith("Answer:"):
            raise RuntimeError("model crashed")  # the gateway answers 500
        return planning_model(prompt)

    gateway.policy = policy
    async with LLMClient(gateway.url) as llm:
        steps = [
            s async for s in make_agent(llm).run("Which capital has more people, Aldoria's or Brenmark's?")
        ]
    assert steps[-1].fatal and "answered 500" in steps[-1].content
    assert not any(s.kind == "answer" for s in steps)


async def test_planner_over_http_sse(gateway: Gateway) -> None:
    index = CorpusIndex()
    index.add_documents("world", CORPUS)
    search = SearchCorpus(index)
    async with LLMClient(gateway.url) as llm:
        catalog = AgentCatalog(llm, RunOptions(model="m", max_steps=6))
        catalog.register(*planner_agent([CorpusSearcher(search)], [search], top_k=1))
        app = FastAPI()
        mount(app, AgentRuntime(catalog, index))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://a") as client:
            async with client.stream(
                "POST",
                "/v1/agents/planner/run",
                json={"question": "Which capital has more people, Aldoria's or Brenmark's?", "stream": True},
            ) as resp:
                kinds = [line[7:] async for line in resp.aiter_lines() if line.startswith("event:")]
                assert resp.status_code == 200
            r = await client.post(
                "/v1/chat/completions",
                json={
                    "model": "planner",
                    "messages": [{"role": "user", "content": "What is the capital of Brenmark?"}],
                },
            )
    assert kinds.count("step") >= 14 and kinds[-1] == "done"
    assert "Sources:" in r.json()["choices"][0]["message"]["content"]
