"""The agent runtime's core object: what the HTTP, gRPC and bus adapters and the CLI call."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from typing import Any

from services.agent_runtime.core.agents.base import Turn
from services.agent_runtime.core.catalog import AgentCatalog, AgentInfo
from services.agent_runtime.core.corpus.index import CorpusIndex
from services.agent_runtime.core.corpus.state import IndexedDataset, IndexState
from services.agent_runtime.core.errors import CorpusError, SessionNotFound, UnknownTool
from services.agent_runtime.core.runs import AgentRun, Message, chat_turns
from services.agent_runtime.core.sessions import SessionStore, StoredTurn
from services.agent_runtime.core.tools.base import Tool, validate_args

log = logging.getLogger(__name__)


class AgentRuntime:
    """The agents (with their tools and sessions) and the corpus index they search.

    ``index_state`` records the indexed datasets so that ``restore_index`` rebuilds the index after a
    restart (each ``corpus.deduplicated`` event is delivered once); ``configured_manifest`` is a dataset
    indexed at every start, before the recorded ones.
    """

    def __init__(
        self,
        catalog: AgentCatalog,
        index: CorpusIndex,
        index_state: IndexState | None = None,
        configured_manifest: str | None = None,
    ) -> None:
        self.catalog = catalog
        self.index = index
        self.index_state = index_state
        self.configured_manifest = configured_manifest

    async def aclose(self) -> None:
        await self.catalog.llm.aclose()

    # ------------------------------------------------------------------------------ agents and tools
    def agents(self) -> list[AgentInfo]:
        return self.catalog.list()

    def tools(self) -> dict[str, Tool]:
        """Every tool some agent uses, by name."""
        return self.catalog.tools()

    async def run_tool(self, name: str, arguments: dict[str, Any]) -> str:
        """Call one tool directly (what an agent's tool call does); raises UnknownTool or ToolError."""
        tools = self.tools()
        tool = tools.get(name)
        if tool is None:
            raise UnknownTool(f"unknown tool {name!r}; tools are: {', '.join(tools)}")
        return await asyncio.to_thread(tool.run, validate_args(tool, arguments))

    # ------------------------------------------------------------------------------ runs
    def start(
        self,
        agent: str,
        question: str,
        *,
        model: str | None = None,
        max_steps: int | None = None,
        session_id: str | None = None,
        history: Sequence[Turn] = (),
    ) -> AgentRun:
        """Validate a run now (so an adapter can refuse it before streaming); its steps come as iterated.

        With a session id the session's earlier turns are the history and the answer is recorded;
        without one the run is stateless (``history`` is what the caller remembers).
        """
        steps = self.catalog.run(
            agent, question, model=model, max_steps=max_steps, session_id=session_id, history=history
        )
        return AgentRun(agent, self.catalog.options(model, max_steps).model, session_id, steps)

    def start_in_session(
        self,
        agent: str,
        question: str,
        *,
        session_id: str | None = None,
        model: str | None = None,
        max_steps: int | None = None,
    ) -> AgentRun:
        """A run recorded in a session: the one named, else a new one (its id is in the run)."""
        session_id = session_id or uuid.uuid4().hex
        return self.start(agent, question, model=model, max_steps=max_steps, session_id=session_id)

    async def start_owned(
        self,
        agent: str,
        question: str,
        *,
        owner: str,
        session_id: str | None = None,
        model: str | None = None,
        max_steps: int | None = None,
    ) -> AgentRun:
        """``start_in_session`` for a caller: a new session becomes ``owner``'s; a session of anyone
        else is SessionNotFound, as if it did not exist."""
        if session_id is not None:
            await self._check_owner(session_id, owner)
        run = self.start_in_session(agent, question, session_id=session_id, model=model, max_steps=max_steps)
        assert run.session_id is not None
        store = self.catalog.sessions
        if store is not None and not await asyncio.to_thread(store.exists, run.session_id):
            await asyncio.to_thread(store.claim, run.session_id, owner)
        return run

    def start_chat(self, agent: str, messages: Sequence[Message], max_steps: int | None = None) -> AgentRun:
        """A stateless run on an OpenAI-style conversation: the last (user) message is the question,
        the earlier ones the memory."""
        question, history = chat_turns(messages)
        return self.start(agent, question, max_steps=max_steps, history=history)

    # ------------------------------------------------------------------------------ sessions
    async def session_turns(self, session_id: str, owner: str | None = None) -> list[StoredTurn]:
        """``owner``: the caller; another's session is SessionNotFound (None: no check, as a library)."""
        store = self._session_store()
        if owner is not None:
            await self._check_owner(session_id, owner)
        turns = await asyncio.to_thread(store.turns, session_id)
        if not turns:
            raise SessionNotFound(f"no session {session_id!r}")
        return turns

    async def delete_session(self, session_id: str, owner: str | None = None) -> bool:
        """False when there was no such session (or it is another ``owner``'s)."""
        if owner is not None:
            try:
                await self._check_owner(session_id, owner)
            except SessionNotFound:
                return False
        return await asyncio.to_thread(self._session_store().delete, session_id)

    async def _check_owner(self, session_id: str, owner: str) -> None:
        """SessionNotFound unless the session is ``owner``'s or not stored yet."""
        store = self.catalog.sessions
        if store is None:
            return
        if await asyncio.to_thread(store.exists, session_id):
            if await asyncio.to_thread(store.owner, session_id) != owner:
                raise SessionNotFound(f"no session {session_id!r}")

    def _session_store(self) -> SessionStore:
        if self.catalog.sessions is None:
            raise SessionNotFound("sessions are not kept by this runtime")
        return self.catalog.sessions

    # ------------------------------------------------------------------------------ corpus index
    def index_dataset(self, dataset_id: str, manifest_uri: str) -> int:
        """Index (or re-index) a dataset and record it for restarts; returns its number of documents.

        Blocking (reading shards, building BM25): call it in a worker thread from async code.
        """
        try:
            docs = self.index.add_manifest(dataset_id, manifest_uri)
        except CorpusError as exc:
            raise CorpusError(f"cannot index dataset {dataset_id}: {exc}") from exc
        if self.index_state is not None:
            self.index_state.record(IndexedDataset(dataset_id, manifest_uri))
        log.info("indexed dataset %s: %d documents, %d passages", dataset_id, docs, self.index.num_passages)
        return docs

    def restore_index(self) -> None:
        """Index the configured dataset and those recorded before a restart (blocking)."""
        datasets = self.index_state.load() if self.index_state is not None else []
        if self.configured_manifest:
            uri = self.configured_manifest
            datasets.insert(0, IndexedDataset(f"configured:{uri}", uri))
        for ds in datasets:
            try:
                docs = self.index.add_manifest(ds.dataset_id, ds.manifest_uri)
                log.info("indexed dataset %s at start-up: %d documents", ds.dataset_id, docs)
            except CorpusError as exc:  # one unreadable dataset must not keep the service down
                log.error("cannot index dataset %s at start-up: %s", ds.dataset_id, exc)
