"""The core object the adapters call, without any adapter: its refusals, the corpus index it records
and restores, and the conversation of a stateless chat."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from services.agent_runtime.core import (
    AgentCatalog,
    AgentRuntime,
    CorpusError,
    InvalidRun,
    Message,
    RunOptions,
    SessionNotFound,
    UnknownAgent,
    UnknownTool,
)
from services.agent_runtime.core.catalog import react_agent
from services.agent_runtime.core.corpus import CorpusIndex, IndexState
from services.agent_runtime.core.llm import LLMClient
from services.agent_runtime.core.runs import chat_turns
from services.agent_runtime.core.tools import Calculator, SearchCorpus
from shared.artifacts import ArtifactStore
from shared.errors import Refusal


def write_dataset(root: Path, docs: list[dict[str, str]]) -> str:
    root.mkdir(parents=True)
    (root / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    manifest = root / "manifest.json"
    manifest.write_text(
        json.dumps({"dataset_id": root.name, "documents": len(docs), "shards": [{"path": "docs.jsonl"}]})
    )
    return manifest.as_uri()


def runtime_on(
    index: CorpusIndex, state: IndexState | None = None, configured: str | None = None
) -> AgentRuntime:
    catalog = AgentCatalog(LLMClient("http://127.0.0.1:9"), RunOptions("m", 3))  # never called here
    catalog.register(*react_agent([Calculator(), SearchCorpus(index)]))
    return AgentRuntime(catalog, index, state, configured)


def test_refusals_are_shared_refusals_named_for_what_was_refused() -> None:
    core = runtime_on(CorpusIndex())
    with pytest.raises(UnknownAgent, match="unknown agent 'nope'; agents are: react"):
        core.start("nope", "hi")
    with pytest.raises(InvalidRun, match="question is empty"):
        core.start("react", "  ")
    with pytest.raises(InvalidRun, match="max_steps must be from 1 to 50"):
        core.start_in_session("react", "hi", max_steps=99)
    with pytest.raises(UnknownTool, match="unknown tool 'oracle'; tools are: calculator, search_corpus"):
        asyncio.run(core.run_tool("oracle", {}))
    with pytest.raises(SessionNotFound, match="sessions are not kept"):
        asyncio.run(core.session_turns("s1"))
    for refused in (UnknownAgent, InvalidRun, UnknownTool, SessionNotFound, CorpusError):
        assert issubclass(refused, Refusal)
    assert asyncio.run(core.run_tool("calculator", {"expression": "6 * 7"})) == "42"


def test_a_run_in_a_session_gets_a_new_session_id_unless_one_is_named() -> None:
    core = runtime_on(CorpusIndex())
    fresh = core.start_in_session("react", "hi")
    named = core.start_in_session("react", "hi", session_id="s-1", model="other")
    stateless = core.start("react", "hi")
    assert fresh.session_id and len(fresh.session_id) == 32 and fresh.model == "m"
    assert (named.session_id, named.model) == ("s-1", "other")
    assert stateless.session_id is None  # nothing is recorded: the caller carries the history


def test_chat_turns_take_the_last_user_message_and_the_earlier_pairs() -> None:
    question, turns = chat_turns(
        [
            Message("system", "be brief"),
            Message("user", "My name is Cy"),
            Message("assistant", "Hello Cy"),
            Message("user", "unanswered"),
            Message("user", "What is my name?"),
        ]
    )
    assert question == "What is my name?"
    assert [(t.question, t.answer) for t in turns] == [("My name is Cy", "Hello Cy")]
    for last in (Message("assistant", "hi"), Message("user", None)):
        with pytest.raises(InvalidRun, match="the last message must be a user message"):
            chat_turns([Message("user", "hi"), last])


def test_indexed_datasets_are_recorded_and_restored_and_bad_ones_refused(tmp_path: Path) -> None:
    state = IndexState(ArtifactStore((tmp_path / "artifacts").as_uri()))
    atlas = write_dataset(tmp_path / "atlas", [{"id": "a-1", "text": "The capital of Aldoria is Velm."}])
    configured = write_dataset(tmp_path / "base", [{"id": "b-1", "text": "Tea grows in Brenmark."}])
    core = runtime_on(CorpusIndex(), state)
    assert core.index_dataset("atlas", atlas) == 1
    with pytest.raises(CorpusError, match="cannot index dataset broken: dataset manifest not found"):
        core.index_dataset("broken", (tmp_path / "nowhere.json").as_uri())
    assert [d.dataset_id for d in state.load()] == ["atlas"]  # a refused dataset is not recorded

    restarted = runtime_on(CorpusIndex(), state, configured)
    restarted.restore_index()
    assert restarted.index.dataset_ids == [f"configured:{configured}", "atlas"]
    assert restarted.index.search("capital of Aldoria", 1)[0].doc_id == "a-1"
