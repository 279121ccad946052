"""The transactional outbox: events written in the transaction of the change that caused them, and
the sweep that publishes them afterwards in commit order.

Writing a row asks the store to call its commit listeners once the transaction commits, so the
service's relay wakes at once instead of at its next timed sweep.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from contracts.events import EventEnvelope, EventPayload
from services.model_registry.core.schema import OutboxMessage, utcnow
from services.model_registry.core.store import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RelayResult:
    sent: int
    error: str | None = None
    more: bool = False  # a full batch went out: sweep again
    busy: bool = False  # another replica holds the relay lock


class Outbox:
    def __init__(self, store: Store, *, source: str) -> None:
        self.store = store
        self.source = source  # the envelopes' source service

    def add(
        self,
        s: Session,
        payload: EventPayload,
        event_id: str,
        causation: EventEnvelope | None,
        correlation_id: str | None = None,
    ) -> str:
        """Queue ``payload`` in the transaction ``s``; returns the event id it goes out with."""
        # A fact may legitimately happen again (re-promotion after a rollback): keep ids unique.
        base, n = event_id, 1
        while s.scalar(select(OutboxMessage.id).where(OutboxMessage.event_id == event_id)) is not None:
            n += 1
            event_id = f"{base}:{n}"
        env = EventEnvelope.wrap(
            payload,
            source=self.source,
            causation=causation,
            event_id=event_id,
            correlation_id=correlation_id or (causation.correlation_id if causation else None),
        )
        s.add(
            OutboxMessage(
                event_id=env.id,
                event_type=env.type,
                subject=payload.subject(),
                envelope=env.model_dump(mode="json"),
                created_at=utcnow(),
            )
        )
        self.store.notify_after_commit(s)
        return env.id

    def pending(self, limit: int = 100) -> list[tuple[int, dict[str, Any]]]:
        """Unpublished rows (id, envelope JSON) in commit order (read-only: for inspection and tests)."""
        with self.store.transaction() as s:
            rows = s.scalars(
                select(OutboxMessage)
                .where(OutboxMessage.published_at.is_(None))
                .order_by(OutboxMessage.id)
                .limit(limit)
            )
            return [(r.id, dict(r.envelope)) for r in rows]

    def relay(self, publish: Callable[[EventEnvelope], None], limit: int = 100) -> RelayResult:
        """Publish up to ``limit`` unpublished rows in id order with ``publish`` (blocking); mark them sent.

        One transaction holds the rows while they are published and marks them in it, so a crash
        anywhere leaves them unpublished and the next sweep (of any replica) sends them again; the
        bus drops the copies by event id (``Nats-Msg-Id``). On PostgreSQL one replica relays at a
        time (a transaction-scoped advisory lock, tried, never waited for): rows of one model are
        numbered in commit order because every change takes the model's row lock first, and a
        single relay keeps that order on the wire, so a consumer never sees a rollback before the
        promotion it undoes (SKIP LOCKED batches on several replicas would reorder them).
        A row whose publish fails stops the sweep (later rows must not overtake it).
        """
        try:
            return self._sweep(publish, limit)
        except OperationalError as exc:
            if "locked" not in str(exc):
                raise
            # SQLite: a writer committed while we held an older snapshot, so the marks could not be
            # written. What went out goes again next sweep and the bus drops the copies.
            log.info("outbox: database busy, sweeping again later: %s", exc.orig)
            return RelayResult(0, busy=True)

    def _sweep(self, publish: Callable[[EventEnvelope], None], limit: int) -> RelayResult:
        with self.store.transaction() as s:
            if s.get_bind().dialect.name == "postgresql" and not s.scalar(
                text("SELECT pg_try_advisory_xact_lock(hashtext(current_schema() || '.puyu-outbox-relay'))")
            ):
                return RelayResult(0, busy=True)
            rows = s.scalars(
                select(OutboxMessage)
                .where(OutboxMessage.published_at.is_(None))
                .order_by(OutboxMessage.id)
                .limit(limit)
                .with_for_update()
            ).all()
            sent = 0
            for row in rows:
                row.attempts += 1
                try:
                    publish(EventEnvelope.model_validate(row.envelope))
                except Exception as exc:  # any publish failure: keep the row, stop, retry next sweep
                    row.last_error = f"{type(exc).__name__}: {exc}"[:2000]
                    log.warning("outbox: publishing %s failed, will retry: %s", row.event_id, exc)
                    return RelayResult(sent, error=row.last_error, more=True)
                row.published_at = utcnow()
                sent += 1
            return RelayResult(sent, more=len(rows) == limit)
