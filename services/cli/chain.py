"""Watch the chain's events for one correlation id (used by `puyu demo` and the end-to-end test)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg

from contracts.events import EventEnvelope, InvalidEvent, JobFailed
from contracts.events.subjects import EVENTS_PREFIX
from shared.bus.identity import NatsIdentity


class ChainFailed(RuntimeError):
    pass


class ChainWatcher:
    """Collects every event of one correlation id, in arrival order, from a core NATS subscription."""

    def __init__(
        self,
        nats_url: str,
        correlation_id: str,
        on_event: Callable[[EventEnvelope], Any] | None = None,
        identity: NatsIdentity | None = None,
    ) -> None:
        """``identity``: who this watcher is on NATS (default: from ``PUYU_NATS_*`` settings)."""
        self.nats_url = nats_url
        self.identity = identity if identity is not None else NatsIdentity.from_env()
        self.correlation_id = correlation_id
        self.on_event = on_event
        self.events: list[EventEnvelope] = []
        self._changed = asyncio.Condition()
        self._nc: Client | None = None

    async def __aenter__(self) -> ChainWatcher:
        self._nc = await nats.connect(self.nats_url, **self.identity.connect_options())
        await self._nc.subscribe(f"{EVENTS_PREFIX}.>", cb=self._on_msg)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._nc:
            with contextlib.suppress(Exception):
                await self._nc.drain()

    async def _on_msg(self, msg: Msg) -> None:
        try:
            env = EventEnvelope.from_bytes(msg.data)
        except InvalidEvent:
            return
        if env.correlation_id != self.correlation_id or any(e.id == env.id for e in self.events):
            return  # another request's event, or a redelivered duplicate
        self.events.append(env)
        if self.on_event:
            self.on_event(env)
        async with self._changed:
            self._changed.notify_all()

    def find(
        self, event_type: str, predicate: Callable[[EventEnvelope], bool] | None = None
    ) -> EventEnvelope | None:
        for env in self.events:
            if env.type == event_type and (predicate is None or predicate(env)):
                return env
        return None

    async def wait_for(
        self,
        event_types: str | tuple[str, ...],
        timeout: float,
        predicate: Callable[[EventEnvelope], bool] | None = None,
    ) -> EventEnvelope:
        """The first event of one of the types; raises ChainFailed when a job of this request failed."""
        types = (event_types,) if isinstance(event_types, str) else event_types

        def ready() -> EventEnvelope | None:
            for env in self.events:
                if env.type == JobFailed.event_type:
                    failed: JobFailed = env.payload_as(JobFailed)
                    raise ChainFailed(f"{failed.service} failed on {failed.source_subject}: {failed.error}")
                if env.type in types and (predicate is None or predicate(env)):
                    return env
            return None

        async def wait() -> EventEnvelope:
            async with self._changed:
                while (found := ready()) is None:
                    await self._changed.wait()
                return found

        try:
            return await asyncio.wait_for(wait(), timeout)
        except TimeoutError:
            raise TimeoutError(f"no {' or '.join(types)} event within {timeout:.0f}s") from None
