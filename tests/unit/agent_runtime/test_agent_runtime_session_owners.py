"""A session belongs to the principal that created it: to any other it does not exist (404 over
HTTP, NOT_FOUND over gRPC), it cannot be continued, read or deleted by them."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from services.agent_runtime.core import AgentRuntime
from services.agent_runtime.core.catalog import AgentCatalog, RunOptions, react_agent
from services.agent_runtime.core.corpus import CorpusIndex
from services.agent_runtime.core.llm import LLMClient
from services.agent_runtime.core.sessions import SessionStore
from services.agent_runtime.core.tools import Calculator
from services.agent_runtime.http_api import mount
from shared.artifacts import ArtifactStore
from shared.auth import Authenticator, Role
from shared.auth.http import install_auth
from shared.auth.tokens import TokenEntry, new_token, read_entries, token_hash, write_entries
from tests.support.auth_tokens import bearer, issue_tokens


def _answering(request: httpx.Request) -> httpx.Response:
    prompt = json.loads(request.content)["prompt"]
    return httpx.Response(200, json={"choices": [{"index": 0, "text": f" Final Answer: seen {len(prompt)}"}]})


async def test_sessions_belong_to_their_creator(tmp_path: Path) -> None:
    tokens_file = tmp_path / "tokens.jsonl"
    tokens = issue_tokens(tokens_file)
    other = new_token()  # a second operator
    write_entries(
        tokens_file,
        [*read_entries(tokens_file), TokenEntry("olga-operator", Role.OPERATOR, token_hash(other))],
    )
    async with LLMClient("http://gw", transport=httpx.MockTransport(_answering)) as llm:
        store = SessionStore(ArtifactStore((tmp_path / "artifacts").as_uri()))
        catalog = AgentCatalog(llm, RunOptions("m", 3), store)
        catalog.register(*react_agent([Calculator()]))
        app = FastAPI()
        install_auth(app, Authenticator(tokens_file))
        mount(app, AgentRuntime(catalog, CorpusIndex()))
        owner, stranger = bearer(tokens[Role.OPERATOR]), bearer(other)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://a") as client:
            run = {"question": "hello", "session_id": "mine"}
            assert (await client.post("/v1/agents/react/run", json=run, headers=owner)).status_code == 200
            assert store.owner("mine") == "otto-operator"
            assert len((await client.get("/v1/sessions/mine", headers=owner)).json()["turns"]) == 1
            # another principal: the session does not exist for it, whatever it tries
            assert (await client.get("/v1/sessions/mine", headers=stranger)).status_code == 404
            r = await client.post("/v1/agents/react/run", json=run, headers=stranger)
            assert r.status_code == 404
            assert (await client.delete("/v1/sessions/mine", headers=stranger)).json()["deleted"] is False
            assert (
                await client.get("/v1/sessions/mine", headers=bearer(tokens[Role.ADMIN]))
            ).status_code == 404
            # a reader cannot run at all; the owner still has its session, and may delete it
            r = await client.post("/v1/agents/react/run", json=run, headers=bearer(tokens[Role.READER]))
            assert r.status_code == 403
            assert len((await client.get("/v1/sessions/mine", headers=owner)).json()["turns"]) == 1
            assert (await client.delete("/v1/sessions/mine", headers=owner)).json()["deleted"] is True
            # a new session without an id is the caller's too
            r = await client.post("/v1/agents/react/run", json={"question": "hi"}, headers=stranger)
            new_id = r.json()["session_id"]
            assert store.owner(new_id) == "olga-operator"
            assert (await client.get(f"/v1/sessions/{new_id}", headers=owner)).status_code == 404


@pytest.mark.parametrize("owner", [None, "someone"])
def test_a_session_keeps_its_owner_through_turns_and_deletion(tmp_path: Path, owner: str | None) -> None:
    store = SessionStore(ArtifactStore(tmp_path.as_uri()))
    if owner:
        store.claim("s1", owner)
    store.append("s1", "react", "q", "a")
    assert store.owner("s1") == owner
    assert store.delete("s1") and store.owner("s1") == owner and store.turns("s1") == []
