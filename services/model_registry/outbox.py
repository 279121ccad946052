"""The outbox relay: publishes committed outbox rows to NATS, then marks them published.

At-least-once: a crash between publish and mark re-publishes on the next sweep, and JetStream drops
the copy because ``Nats-Msg-Id`` is the event id. Several replicas relaying the same row is safe
for the same reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from contracts.events import EVENT_TYPES, EventEnvelope
from services.model_registry.core import Registry
from shared.bus import Bus

log = logging.getLogger(__name__)


class OutboxRelay:
    def __init__(self, registry: Registry, bus: Bus, interval: float = 1.0) -> None:
        self.registry, self.bus, self.interval = registry, bus, interval
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    def poke(self) -> None:
        """Ask for a sweep now (after a commit that wrote outbox rows)."""
        self._wake.set()

    async def flush(self) -> int:
        """Publish every unpublished row in order; returns how many went out. Stops at the first failure."""
        async with self._lock:
            sent = 0
            while True:
                rows = await asyncio.to_thread(self.registry.pending_outbox, 100)
                if not rows:
                    return sent
                for row_id, data in rows:
                    env = EventEnvelope.model_validate(data)
                    try:
                        await self.bus.publish_envelope(env, EVENT_TYPES[env.type])
                    except Exception as exc:
                        log.warning("outbox: publishing %s failed, will retry: %s", env.id, exc)
                        await asyncio.to_thread(
                            self.registry.mark_failed, row_id, f"{type(exc).__name__}: {exc}"
                        )
                        return sent
                    await asyncio.to_thread(self.registry.mark_published, row_id)
                    sent += 1

    async def _loop(self) -> None:
        while True:
            if self.bus.started:
                try:
                    await self.flush()
                except Exception:
                    log.exception("outbox relay sweep failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)
            self._wake.clear()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="registry-outbox-relay")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
