"""The outbox relay: publishes committed outbox rows to NATS in commit order, then marks them sent.

At-least-once: a crash between publish and commit re-publishes on the next sweep, and JetStream drops
the copy because ``Nats-Msg-Id`` is the event id. The database work (claim, mark) runs in a worker
thread inside one transaction (``Registry.relay_outbox``); each publish hops back to the event loop.
It sweeps every ``interval`` seconds and at once when the core reports a commit that wrote events.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from contracts.events import EVENT_TYPES, EventEnvelope
from services.model_registry.core.registry import Registry
from shared.bus import Bus

log = logging.getLogger(__name__)


class OutboxRelay:
    def __init__(
        self, registry: Registry, bus: Bus, interval: float = 1.0, publish_timeout: float = 30.0
    ) -> None:
        self.registry, self.bus, self.interval = registry, bus, interval
        self.publish_timeout = publish_timeout
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = asyncio.Lock()
        registry.on_commit(self._wake_from_any_thread)

    def _wake_from_any_thread(self) -> None:
        """The core commits in worker threads: the event is set on the relay's own loop."""
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nothing to wake
                loop.call_soon_threadsafe(self._wake.set)

    async def flush(self) -> int:
        """Publish every unpublished row in order; returns how many went out. Stops at the first failure
        or when another replica is relaying (it will send them)."""
        loop = asyncio.get_running_loop()

        def publish(env: EventEnvelope) -> None:  # called from the worker thread
            cls = EVENT_TYPES.get(env.type)
            if cls is None:
                raise ValueError(f"unknown event type {env.type!r} in the outbox")
            fut = asyncio.run_coroutine_threadsafe(self.bus.publish_envelope(env, cls), loop)
            fut.result(self.publish_timeout)

        async with self._lock:
            sent = 0
            while True:
                res = await asyncio.to_thread(self.registry.relay_outbox, publish)
                sent += res.sent
                if res.error or res.busy or not res.more:
                    return sent

    async def _loop_forever(self) -> None:
        while True:
            if self.bus.started:
                try:
                    await self.flush()
                except Exception:  # a sweep's failure must not end the relay: the next one retries
                    log.exception("outbox relay sweep failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)
            self._wake.clear()

    def start(self) -> None:
        if self._task is None:
            self._loop = asyncio.get_running_loop()
            self._task = asyncio.create_task(self._loop_forever(), name="registry-outbox-relay")

    async def stop(self) -> None:
        self._loop = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
