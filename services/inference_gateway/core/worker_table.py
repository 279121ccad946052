"""The gateway's table of worker processes, kept from their announcements (no transport here).

A worker counts as live while its latest announcement is younger than ``ttl`` seconds (it announces
every ``PUYU_GATEWAY_ANNOUNCE_INTERVAL``); one that fails a connection is suspended until it
announces again, and one withdrawn is dropped at once. Load is the worker's announced running +
waiting sequences, plus the requests this gateway sent it since that announcement (so a burst
between two announcements spreads instead of piling onto the worker that looked idlest).
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from contracts.events.inference import ServedLoad, WorkerAnnouncement
from services.inference_gateway.core.routing import WorkerLoad

log = logging.getLogger(__name__)


@dataclass
class WorkerState:
    announcement: WorkerAnnouncement
    seen: float  # monotonic time the announcement was made (received, less its age on arrival)
    suspended: bool = False
    sent: dict[int, float] = field(
        default_factory=dict
    )  # this gateway's requests in flight: ticket -> sent at

    @property
    def instance(self) -> str:
        return self.announcement.instance

    @property
    def announced_load(self) -> int:
        # every engine of a worker shares its CPUs/GPU: the load is the whole worker's
        return sum(s.running + s.waiting for s in self.announcement.served)

    def load(self) -> int:
        return self.announced_load + sum(1 for t in self.sent.values() if t >= self.seen)

    def free_fraction(self) -> float:
        served = self.announcement.served
        total = sum(s.total_blocks for s in served)
        return sum(s.free_blocks for s in served) / total if total else 0.0

    def serving(self, name: str) -> ServedLoad | None:
        return next((s for s in self.announcement.served if name in s.names and s.state == "ready"), None)


class WorkerTable:
    def __init__(
        self,
        *,
        own_instance: str | None = None,
        ttl: float = 6.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.own_instance, self.ttl, self.clock = own_instance, ttl, clock
        self._workers: dict[str, WorkerState] = {}
        self._tickets = itertools.count()

    # ------------------------------------------------------------------------------ updates
    def update(self, announcement: WorkerAnnouncement) -> None:
        if announcement.instance == self.own_instance or not announcement.grpc_target:
            return  # this process's own pool is served in-process, never over the network
        age = (datetime.now(UTC) - announcement.updated_at).total_seconds()
        seen = self.clock() - min(max(age, 0.0), self.ttl + 1)  # an old value read at start-up is not fresh
        prev = self._workers.get(announcement.instance)
        state = WorkerState(announcement, seen)
        if prev is not None:
            state.sent = prev.sent
            # a suspended worker is back only with an announcement made after it failed
            state.suspended = prev.suspended and seen <= prev.seen
        self._workers[announcement.instance] = state

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
        for instance, w in list(self._workers.items()):
            if now - w.seen > self.ttl and not w.sent:
                del self._workers[instance]  # expired: forget it (requests still on it keep their entry)
        return [w for w in self._workers.values() if not w.suspended and now - w.seen <= self.ttl]

    def loads(self, name: str) -> list[WorkerLoad]:
        """The live workers serving ``name`` now: the snapshot the routing policy decides on."""
        out = []
        for w in self.live():
            served = w.serving(name)
            if served is not None and w.announcement.grpc_target:
                out.append(
                    WorkerLoad(
                        w.instance, w.announcement.grpc_target, w.load(), w.free_fraction(), served.waiting
                    )
                )
        return out

    def names(self) -> list[tuple[str, str, int, str, str | None]]:
        """(served name, model name, version, worker, quantisation) of every live worker's ready versions."""
        return sorted(
            (
                (n, s.model_name, s.version, w.instance, s.quantization)
                for w in self.live()
                for s in w.announcement.served
                if s.state == "ready"
                for n in s.names
            ),
            key=lambda entry: entry[:4],
        )

    def begin(self, instance: str) -> int:
        """Count a request sent to ``instance`` in its load until it ends; returns a ticket for ``end``."""
        ticket = next(self._tickets)
        state = self._workers.get(instance)
        if state is not None:
            state.sent[ticket] = self.clock()
        return ticket

    def end(self, instance: str, ticket: int) -> None:
        state = self._workers.get(instance)
        if state is not None:
            state.sent.pop(ticket, None)
