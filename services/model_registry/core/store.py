"""The SQLAlchemy access every part of the core shares: transactions (retried on races), lookups,
the per-model lock, the audit log and the processed-event record.

Every state change runs in ONE transaction together with its audit entry, its outgoing event
(outbox row) and, for an event consumed from the bus, the processed-event record, so a redelivery
or a crash can neither lose nor double it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from sqlalchemy import Engine, select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from services.model_registry.core.errors import InvalidInput, NotFound
from services.model_registry.core.schema import (
    Alias,
    AuditEntry,
    ModelVersion,
    ProcessedEvent,
    RegisteredModel,
    utcnow,
)

# Version numbers live in INTEGER columns (32-bit in PostgreSQL; SQLite cannot even bind a number
# above 2**63 - 1): a larger number names no version and would fail in the driver, so it is refused.
MAX_VERSION = 2**31 - 1
MAX_BIGINT = 2**63 - 1  # BIGINT columns (artifact sizes)


def check_version(version: int, field: str = "version") -> int:
    """``version``, or InvalidInput naming ``field`` when no stored version can have that number."""
    if not 1 <= version <= MAX_VERSION:
        raise InvalidInput(f"{field} must be an integer from 1 to {MAX_VERSION}, got {version}")
    return version


log = logging.getLogger(__name__)
T = TypeVar("T")
_NOTIFY = "puyu.notify_on_commit"  # Session.info key: call the commit listeners once this commits


class Store:
    def __init__(self, engine: Engine, *, consumer: str) -> None:
        self.engine = engine
        self.consumer = consumer  # the name processed events are recorded under
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._listeners: list[Callable[[], None]] = []

    # ----------------------------------------------------------------------------- transactions
    def on_commit(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` (in the committing thread) after each commit that asked for it."""
        self._listeners.append(listener)

    def notify_after_commit(self, s: Session) -> None:
        """Have the commit listeners called once ``s`` commits (it wrote something they wait for)."""
        s.info[_NOTIFY] = True

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        with self._sessions.begin() as s:
            yield s
        if s.info.pop(_NOTIFY, False):
            for listener in self._listeners:
                try:
                    listener()
                except Exception:  # the change is committed: a listener's failure must not undo the answer
                    log.exception("commit listener %r failed", listener)

    def retrying(self, fn: Callable[[Session], T], attempts: int = 8) -> T:
        """Run ``fn`` in a transaction; a unique-constraint race or a locked SQLite is retried afresh."""
        for i in range(attempts):
            try:
                with self.transaction() as s:
                    return fn(s)
            except (IntegrityError, OperationalError) as exc:
                if i == attempts - 1 or (
                    isinstance(exc, OperationalError)
                    and "locked" not in str(exc)
                    and "deadlock" not in str(exc)
                    and "serializ" not in str(exc)
                ):
                    raise
                log.info("registry transaction conflict (attempt %d), retrying: %s", i + 1, exc.orig)
                time.sleep(0.02 * (i + 1))
        raise AssertionError("unreachable")

    def already(self, s: Session, event_id: str | None) -> bool:
        """True when this consumer already handled ``event_id``; else records it (same transaction)."""
        if event_id is None:
            return False
        if s.get(ProcessedEvent, (self.consumer, event_id)) is not None:
            return True
        s.add(ProcessedEvent(consumer=self.consumer, event_id=event_id))
        return False

    # ----------------------------------------------------------------------------- lookups
    def model(self, s: Session, name: str) -> RegisteredModel:
        m = s.scalar(select(RegisteredModel).where(RegisteredModel.name == name))
        if m is None:
            raise NotFound(f"unknown model {name!r}")
        return m

    def version(self, s: Session, model: RegisteredModel, version: int) -> ModelVersion:
        v = s.scalar(
            select(ModelVersion).where(ModelVersion.model_id == model.id, ModelVersion.version == version)
        )
        if v is None:
            raise NotFound(f"model {model.name!r} has no version {version}")
        return v

    def alias(self, s: Session, model: RegisteredModel, alias: str, *, lock: bool = False) -> Alias | None:
        q = select(Alias).where(Alias.model_id == model.id, Alias.alias == alias)
        return s.scalar(q.with_for_update() if lock else q)

    def lock_model(self, s: Session, model: RegisteredModel) -> None:
        """Serialise every decision and alias move of one model across replicas.

        PostgreSQL: a row lock (``SELECT ... FOR UPDATE``), and under READ COMMITTED every later read
        in the transaction sees what the previous holder committed. SQLite ignores FOR UPDATE, so a
        no-op write takes the database write lock instead (a stale WAL snapshot then fails with
        "database is locked" and ``retrying`` starts the transaction afresh).
        """
        if s.get_bind().dialect.name == "sqlite":
            s.execute(
                update(RegisteredModel)
                .where(RegisteredModel.id == model.id)
                .values(latest_version=RegisteredModel.latest_version)
            )
        else:
            s.execute(select(RegisteredModel.id).where(RegisteredModel.id == model.id).with_for_update())

    # ----------------------------------------------------------------------------- audit
    def audit(
        self,
        s: Session,
        actor: str,
        action: str,
        model: str,
        version: int | None,
        reason: str = "",
        **details: Any,
    ) -> AuditEntry:
        entry = AuditEntry(
            actor=actor,
            action=action,
            model=model,
            version=version,
            reason=reason,
            details=details,
            time=utcnow(),
        )
        s.add(entry)
        s.flush()
        return entry
