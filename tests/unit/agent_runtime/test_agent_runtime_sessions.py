"""Sessions: multi-turn memory kept in the artifact store, isolated between concurrent sessions."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from services.agent_runtime.core import AgentRuntime, InvalidSession
from services.agent_runtime.core.catalog import AgentCatalog, RunOptions, react_agent
from services.agent_runtime.core.corpus import CorpusIndex
from services.agent_runtime.core.llm import LLMClient
from services.agent_runtime.core.sessions import SessionStore
from services.agent_runtime.core.tools import Calculator
from services.agent_runtime.http_api import mount
from shared.artifacts import ArtifactStore
from shared.natsserver import free_port


def remembering_model(prompt: str) -> str:
    """Answers 'My name is X' with 'Hello X' and 'What is my name?' from the earlier turns it is shown."""
    question = re.findall(r"Question: (.*)", prompt)[-1]
    if m := re.match(r"My name is (\w+)", question):
        return f" I now know the final answer.\nFinal Answer: Hello {m.group(1)}"
    names = re.findall(r"Final Answer: Hello (\w+)", prompt)
    return f" I now know the final answer.\nFinal Answer: {names[-1] if names else 'I do not know'}"


@pytest.fixture
async def gateway_url() -> AsyncIterator[str]:
    app = FastAPI()
    port = free_port()

    @app.post("/v1/completions")
    async def completions(body: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(0.02)  # lets concurrent sessions interleave
        return {"choices": [{"index": 0, "text": remembering_model(body["prompt"])}]}

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    for _ in range(500):
        if server.started:
            break
        await asyncio.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    await task


def catalog_on(llm: LLMClient, root: Path) -> AgentCatalog:
    catalog = AgentCatalog(llm, RunOptions("m", 3), SessionStore(ArtifactStore(root.as_uri())))
    catalog.register(*react_agent([Calculator()]))
    return catalog


async def answer(catalog: AgentCatalog, question: str, session: str) -> str:
    return [s async for s in catalog.run("react", question, session_id=session)][-1].content


async def test_sessions_remember_persist_and_stay_isolated(gateway_url: str, tmp_path: Path) -> None:
    async with LLMClient(gateway_url) as llm:
        catalog = catalog_on(llm, tmp_path)
        names = [f"user{i}" for i in range(6)]
        await asyncio.gather(*(answer(catalog, f"My name is {n}", f"s-{n}") for n in names))
        recalled = await asyncio.gather(*(answer(catalog, "What is my name?", f"s-{n}") for n in names))
        assert recalled == names
        # a restarted runtime (a new store on the same artifacts) continues the conversation
        restarted = catalog_on(llm, tmp_path)
        assert await answer(restarted, "What is my name?", "s-user3") == "user3"
        assert await answer(restarted, "What is my name?", "fresh") == "I do not know"
        turns = restarted.sessions.turns("s-user3")  # type: ignore[union-attr]
        assert [t.answer for t in turns] == ["Hello user3", "user3", "user3"]


async def test_same_session_runs_one_at_a_time(gateway_url: str, tmp_path: Path) -> None:
    async with LLMClient(gateway_url) as llm:
        catalog = catalog_on(llm, tmp_path)
        # sent together: the second must still see the first's answer
        first, second = await asyncio.gather(
            answer(catalog, "My name is Ada", "s1"), answer(catalog, "What is my name?", "s1")
        )
    assert (first, second) == ("Hello Ada", "Ada")


async def test_session_ids_are_checked_and_sessions_served_over_http(
    gateway_url: str, tmp_path: Path
) -> None:
    store = SessionStore(ArtifactStore(tmp_path.as_uri()))
    for bad in ("../escape", "", "a/b", "x" * 200):
        with pytest.raises(InvalidSession, match="invalid session id"):
            store.turns(bad)
    async with LLMClient(gateway_url) as llm:
        app = FastAPI()
        mount(app, AgentRuntime(catalog_on(llm, tmp_path), CorpusIndex()))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://a") as client:
            r = await client.post(
                "/v1/agents/react/run", json={"question": "My name is Bo", "session_id": "web1"}
            )
            assert r.json()["answer"] == "Hello Bo"
            r = await client.post(
                "/v1/agents/react/run", json={"question": "What is my name?", "session_id": "web1"}
            )
            assert r.json()["answer"] == "Bo"
            assert len((await client.get("/v1/sessions/web1")).json()["turns"]) == 2
            r = await client.post("/v1/agents/react/run", json={"question": "hi", "session_id": "../x"})
            assert r.status_code == 400 and "invalid session id" in r.json()["detail"]
            assert (await client.delete("/v1/sessions/web1")).json()["deleted"] is True
            assert (await client.get("/v1/sessions/web1")).status_code == 404
            # the OpenAI endpoint is stateless: the caller's messages are the memory
            r = await client.post(
                "/v1/chat/completions",
                json={
                    "model": "react",
                    "messages": [
                        {"role": "user", "content": "My name is Cy"},
                        {"role": "assistant", "content": "Hello Cy"},
                        {"role": "user", "content": "What is my name?"},
                    ],
                },
            )
            assert r.json()["choices"][0]["message"]["content"] == "Cy"
