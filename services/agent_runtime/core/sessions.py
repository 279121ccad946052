"""Sessions: the turns of a conversation with an agent, persisted in the artifact store.

One JSON document per session (``agent_runtime/sessions/<id>.json``) so a restarted or another replica
of the service continues the conversation. Runs on one session are serialised by a per-session lock (the
next question needs the previous answer); runs on different sessions never share state.
"""

from __future__ import annotations

import asyncio
import re
import time
import weakref
from dataclasses import asdict, dataclass

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

    def turns(self, session_id: str) -> list[StoredTurn]:
        uri = self.store.uri(self._key(session_id))
        if not self.store.exists(uri):
            return []
        try:
            data = self.store.read_json(uri)
            return [StoredTurn(**t) for t in data["turns"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidSession(f"session {session_id} is unreadable: {exc}") from exc

    def history(self, session_id: str) -> list[Turn]:
        return [Turn(t.question, t.answer) for t in self.turns(session_id)[-self.max_turns :]]

    def append(self, session_id: str, agent: str, question: str, answer: str) -> None:
        turns = [*self.turns(session_id), StoredTurn(question, answer, agent, time.time())]
        self.store.write_json(
            self._key(session_id), {"session_id": session_id, "turns": [asdict(t) for t in turns]}
        )

    def delete(self, session_id: str) -> bool:
        uri = self.store.uri(self._key(session_id))
        if not self.store.exists(uri):
            return False
        self.store.write_json(self._key(session_id), {"session_id": session_id, "turns": []})
        return True
