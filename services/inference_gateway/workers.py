"""The gateway's view of the worker processes: their announcements in ``puyu_workers``, kept by a KV watch.

A worker counts as live while its latest announcement is younger than ``ttl`` seconds (it announces
every ``PUYU_GATEWAY_ANNOUNCE_INTERVAL``); one that fails a connection is suspended until it
announces again, and one deleted from the bucket is dropped at once. Load is the worker's announced
running + waiting sequences, plus the requests this gateway sent it since that announcement (so a
burst between two announcements spreads instead of piling onto the worker that looked idlest).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime

import nats.errors
from pydantic import ValidationError

from contracts.events.inference import ServedLoad, WorkerAnnouncement
from contracts.events.subjects import WORKERS_BUCKET
from shared.bus import Bus

log = logging.getLogger(__name__)


@dataclass
class WorkerState:
    ann: WorkerAnnouncement
    seen: float  # monotonic time the announcement was made (received, less its age on arrival)
    suspended: bool = False
    sent: dict[int, float] = field(default_factory=dict)  # this gateway's requests in flight: id -> sent at

    @property
    def instance(self) -> str:
        return self.ann.instance

    @property
    def announced_load(self) -> int:
        # every engine of a worker shares its CPUs/GPU: the load is the whole worker's
        return sum(s.running + s.waiting for s in self.ann.served)

    def load(self) -> int:
        return self.announced_load + sum(1 for t in self.sent.values() if t >= self.seen)

    def free_fraction(self) -> float:
        total = sum(s.total_blocks for s in self.ann.served)
        return sum(s.free_blocks for s in self.ann.served) / total if total else 0.0

    def serving(self, name: str) -> ServedLoad | None:
        return next((s for s in self.ann.served if name in s.names and s.state == "ready"), None)


@dataclass(frozen=True)
class Candidate:
    worker: WorkerState
    served: ServedLoad

    @property
    def target(self) -> str:
        assert self.worker.ann.grpc_target is not None
        return self.worker.ann.grpc_target


class WorkerView:
    def __init__(
        self,
        bus: Bus | None,
        *,
        own_instance: str | None = None,
        ttl: float = 6.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.bus, self.own_instance, self.ttl, self.clock = bus, own_instance, ttl, clock
        self._workers: dict[str, WorkerState] = {}
        self._ids = itertools.count()
        self._task: asyncio.Task[None] | None = None
        self.synced = asyncio.Event()  # the initial contents of the bucket have been read

    # ------------------------------------------------------------------------------ updates
    def update(self, ann: WorkerAnnouncement) -> None:
        if ann.instance == self.own_instance or not ann.grpc_target:
            return  # this process's own pool is served in-process, never over the network
        now = self.clock()
        age = (datetime.now(UTC) - ann.updated_at).total_seconds()
        seen = now - min(max(age, 0.0), self.ttl + 1)  # an old value read at start-up is not fresh
        prev = self._workers.get(ann.instance)
        state = WorkerState(ann, seen)
        if prev is not None:
            state.sent = prev.sent
            # a suspended worker is back only with an announcement made after it failed
            state.suspended = prev.suspended and seen <= prev.seen
        self._workers[ann.instance] = state

    def remove(self, instance: str) -> None:
        if self._workers.pop(instance, None) is not None:
            log.info("worker %s left", instance)

    def suspend(self, instance: str) -> None:
        state = self._workers.get(instance)
        if state is not None and not state.suspended:
            state.suspended = True
            state.seen = self.clock()
            log.warning("worker %s failed; not routing to it until it announces again", instance)

    # ------------------------------------------------------------------------------ queries
    def live(self) -> list[WorkerState]:
        now = self.clock()
        for name, w in list(self._workers.items()):
            if now - w.seen > self.ttl and not w.sent:
                del self._workers[name]  # expired: forget it (requests still on it keep their entry)
        return [w for w in self._workers.values() if not w.suspended and now - w.seen <= self.ttl]

    def candidates(self, name: str, *, exclude: Collection[str] = (), max_queue: int = 0) -> list[Candidate]:
        """Live workers serving ``name`` (not excluded, queue not full), least loaded first."""
        out = []
        for w in self.live():
            served = w.serving(name)
            if served is None or w.instance in exclude:
                continue
            if max_queue and served.waiting >= max_queue:
                continue
            out.append(Candidate(w, served))
        out.sort(key=lambda c: (c.worker.load(), -c.worker.free_fraction(), random.random()))
        return out

    def full(self, name: str, max_queue: int) -> bool:
        """True when live workers serve ``name`` but every one has ``max_queue`` requests waiting."""
        serving = [s for w in self.live() if (s := w.serving(name)) is not None]
        return bool(serving) and bool(max_queue) and all(s.waiting >= max_queue for s in serving)

    def names(self) -> list[tuple[str, str, int, str]]:
        """(served name, model name, version, worker) of every live worker's ready versions."""
        return sorted(
            (n, s.model_name, s.version, w.instance)
            for w in self.live()
            for s in w.ann.served
            if s.state == "ready"
            for n in s.names
        )

    def begin(self, instance: str) -> int:
        """Count a request sent to ``instance`` in its load until it ends; returns a ticket for ``end``."""
        ticket = next(self._ids)
        state = self._workers.get(instance)
        if state is not None:
            state.sent[ticket] = self.clock()
        return ticket

    def end(self, instance: str, ticket: int) -> None:
        state = self._workers.get(instance)
        if state is not None:
            state.sent.pop(ticket, None)

    # ------------------------------------------------------------------------------ the watch
    async def start(self) -> None:
        self._task = asyncio.create_task(self._watch())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _watch(self) -> None:
        assert self.bus is not None
        while True:
            if not self.bus.started:
                await asyncio.sleep(0.1)
                continue
            watcher = None
            try:
                kv = await self.bus.key_value(WORKERS_BUCKET)
                watcher = await kv.watchall()
                while True:
                    # live workers announce every second or so: a watch silent for a whole ttl may
                    # have lost its subscription (a server restart), so it is made again
                    try:
                        entry = await watcher.updates(timeout=self.ttl)
                    except nats.errors.TimeoutError:
                        break
                    if entry is None:  # the end of what the bucket held when the watch began
                        self.synced.set()
                    elif entry.operation in ("DEL", "PURGE"):
                        self.remove(entry.key)
                    elif entry.value:
                        self._apply(entry.key, entry.value)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the bus reconnects by itself: watch again
                log.warning("watching %s failed: %s: %s", WORKERS_BUCKET, type(exc).__name__, exc)
                await asyncio.sleep(1.0)
            finally:
                if watcher is not None:
                    with contextlib.suppress(Exception):
                        await watcher.stop()

    def _apply(self, key: str, value: bytes) -> None:
        try:
            ann = WorkerAnnouncement.model_validate_json(value)
        except ValidationError as exc:
            log.warning("ignoring a malformed announcement under %r: %s", key, exc.errors()[:1])
            return
        self.update(ann)
