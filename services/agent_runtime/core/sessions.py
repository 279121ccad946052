"""Sessions: the turns of a conversation with an agent, persisted in the artifact store.

One JSON document per session (``agent_runtime/sessions/<id>.json``) so a restarted or another replica
of the service continues the conversation. A session run through the API records its owner (the
principal that created it); the runtime shows it to nobody else. Runs on one session are serialised by a per-session lock (the
next question needs the previous answer); runs on different sessions never share state.
"""

from __future__ import annotations

import asyncio
import re
import time
import weakref
from dataclasses import asdict, dataclass
from typing import Any

from services.agent_runtime.core.agents.base import Turn
from services.agent_runtime.core.errors import InvalidSession
from shared.artifacts import ArtifactStore

_SESSION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
PREFIX = "agent_runtime/sessions"


@dataclass(frozen=True)
class StoredTurn:
    question: str
    answer: str
    agent: str
    time: float


def check_session_id(session_id: str) -> str:
    if not _SESSION_ID.match(session_id) or ".." in session_id:
        raise InvalidSession(
            f"invalid session id {session_id[:40]!r}: use 1-128 letters, digits, '_', '-' or '.'"
        )
    return session_id


class SessionStore:
    def __init__(self, store: ArtifactStore, max_turns: int = 20) -> None:
        self.store, self.max_turns = store, max_turns
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    def _key(self, session_id: str) -> str:
        return f"{PREFIX}/{check_session_id(session_id)}.json"

    def lock(self, session_id: str) -> asyncio.Lock:
        lock = self._locks.get(session_id)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[session_id] = lock
        return lock

    def _document(self, session_id: str) -> dict[str, Any] | None:
        uri = self.store.uri(self._key(session_id))
        if not self.store.exists(uri):
            return None
        try:
            data = self.store.read_json(uri)
            if not isinstance(data, dict) or not isinstance(data.get("turns"), list):
                raise ValueError("not a session document")
            return data
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidSession(f"session {session_id} is unreadable: {exc}") from exc

    def turns(self, session_id: str) -> list[StoredTurn]:
        data = self._document(session_id)
        if data is None:
            return []
        try:
            return [StoredTurn(**t) for t in data["turns"]]
        except TypeError as exc:
            raise InvalidSession(f"session {session_id} is unreadable: {exc}") from exc

    def exists(self, session_id: str) -> bool:
        return self._document(session_id) is not None

    def owner(self, session_id: str) -> str | None:
        """Who created the session through the API (None: no such session, or made without one)."""
        data = self._document(session_id)
        owner = data.get("owner") if data else None
        return str(owner) if owner else None

    def claim(self, session_id: str, owner: str) -> None:
        """Record ``owner`` on a session not yet stored."""
        self._write(session_id, owner, [])

    def _write(self, session_id: str, owner: str | None, turns: list[StoredTurn]) -> None:
        doc: dict[str, Any] = {"session_id": session_id, "turns": [asdict(t) for t in turns]}
        if owner:
            doc["owner"] = owner
        self.store.write_json(self._key(session_id), doc)

    def history(self, session_id: str) -> list[Turn]:
        return [Turn(t.question, t.answer) for t in self.turns(session_id)[-self.max_turns :]]

    def append(self, session_id: str, agent: str, question: str, answer: str) -> None:
        turns = [*self.turns(session_id), StoredTurn(question, answer, agent, time.time())]
        self._write(session_id, self.owner(session_id), turns)

    def delete(self, session_id: str) -> bool:
        if not self.exists(session_id):
            return False
        self._write(session_id, self.owner(session_id), [])  # the owner keeps the id
        return True
