"""The routing policy: which worker process, or this process's own engines, gets a request.

Pure decisions over a snapshot of the workers' loads (``WorkerLoad``), apart from how requests
travel (the gRPC clients in ``remote``) and how loads are learnt (the announcements in ``workers``):
- the least-loaded live worker serving the name goes first (fewest running + waiting requests, then
  the most free KV-cache blocks, then chance, so equal workers share a burst);
- a worker whose queue is full is skipped; one that fails before the first token is left for the
  next one, up to ``attempts`` workers; one that is gone is not routed to until it announces again;
- when no worker takes it, this process's pool does (if it has one and may fall back);
- when nothing can: ``NoWorker`` (every try failed), ``Overloaded`` (every queue full) or
  ``ModelNotFound`` (nobody serves the name).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

from services.inference_gateway.core.pool import ModelNotFound


class NoWorker(RuntimeError):
    """Every worker tried failed before the first token."""

    def __init__(self, name: str, errors: list[str]) -> None:
        super().__init__(f"no worker could serve {name!r}: " + "; ".join(errors))
        self.name, self.errors = name, errors


class Overloaded(RuntimeError):
    """Every place serving the model has ``limit`` requests waiting."""

    def __init__(self, name: str, limit: int) -> None:
        super().__init__(f"model {name!r} has {limit} requests waiting; retry later")
        self.name, self.limit = name, limit


@dataclass(frozen=True)
class WorkerLoad:
    """A live worker serving the requested name, as the policy sees it."""

    instance: str
    target: str  # its gRPC address
    load: int  # running + waiting on the whole worker, plus the requests sent to it since it announced
    free_fraction: float  # free KV-cache blocks / all of them
    waiting: int  # requests waiting on the engine that serves the name


def least_loaded(
    workers: Sequence[WorkerLoad],
    *,
    exclude: Collection[str] = (),
    max_queue: int = 0,
    tiebreak: Callable[[], float] = random.random,
) -> list[WorkerLoad]:
    """The workers a request may go to, best first: not excluded, queue not full, least loaded."""
    open_ = [w for w in workers if w.instance not in exclude and not (max_queue and w.waiting >= max_queue)]
    return sorted(open_, key=lambda w: (w.load, -w.free_fraction, tiebreak()))


def queues_full(workers: Sequence[WorkerLoad], max_queue: int) -> bool:
    """True when workers serve the name but every one has ``max_queue`` requests waiting."""
    return bool(workers) and bool(max_queue) and all(w.waiting >= max_queue for w in workers)


@dataclass(frozen=True)
class RoutingPolicy:
    attempts: int = 3  # workers one request tries before it fails
    max_queue: int = 0  # waiting requests per engine before a place counts as full; 0: no limit
    local_fallback: bool = True  # this process's pool serves a name no worker takes
    local_attempts: int = 3  # tries on this process's engines, each retired by a version switch

    def local_allowed(self, *, local_only: bool, routes_to_workers: bool) -> bool:
        """Whether this process's pool may take the request at all."""
        return local_only or self.local_fallback or not routes_to_workers

    def route(self, name: str) -> Route:
        return Route(self, name)


@dataclass
class Route:
    """One request's way through the places that serve it: what was tried, and why it failed."""

    policy: RoutingPolicy
    name: str
    tried: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    local_tries: int = 0

    def next_worker(self, workers: Sequence[WorkerLoad]) -> WorkerLoad | None:
        """The worker to try now, None when no (further) worker should be tried."""
        ranked = least_loaded(workers, exclude=self.tried, max_queue=self.policy.max_queue)
        if not ranked or len(self.tried) >= self.policy.attempts:
            return None
        self.tried.append(ranked[0].instance)
        return ranked[0]

    def worker_failed(self, detail: str, *, gone: bool) -> bool:
        """Record a worker that failed before the first token; True: route nothing more to it until it
        announces again (it is gone, not just busy)."""
        self.errors.append(detail)
        return gone

    def take_local(self, waiting: int) -> bool:
        """Whether this process's engine (``waiting`` requests queued) takes the request now; raises
        ``Overloaded`` when its queue is full."""
        if self.local_tries >= self.policy.local_attempts:
            return False
        self.local_tries += 1
        if self.policy.max_queue and waiting >= self.policy.max_queue:
            raise Overloaded(self.name, self.policy.max_queue)
        return True

    def refusal(
        self, *, engine_retiring: bool, workers: Sequence[WorkerLoad], served_names: Callable[[], list[str]]
    ) -> Exception:
        """What to answer when no place took the request."""
        errors = list(self.errors)
        if engine_retiring:  # the local engine was still being switched after every local try
            errors.append(f"model {self.name!r} is switching versions, retry")
        if errors:
            return NoWorker(self.name, errors)
        if queues_full(workers, self.policy.max_queue):
            return Overloaded(self.name, self.policy.max_queue)
        return ModelNotFound(self.name, served_names())
