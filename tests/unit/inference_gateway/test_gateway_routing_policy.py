"""The routing policy alone: decisions over a snapshot of worker loads, no transport, no engine."""

from __future__ import annotations

import pytest

from services.inference_gateway.core.pool import ModelNotFound
from services.inference_gateway.core.routing import (
    NoWorker,
    Overloaded,
    RoutingPolicy,
    WorkerLoad,
    least_loaded,
    queues_full,
)


def w(instance: str, load: int = 0, *, free: float = 1.0, waiting: int = 0) -> WorkerLoad:
    return WorkerLoad(instance, f"{instance}:1", load, free, waiting)


def names(workers: list[WorkerLoad]) -> list[str]:
    return [x.instance for x in workers]


def test_least_loaded_first_then_most_free_blocks_then_chance() -> None:
    workers = [w("busy", 5), w("idle", 0, free=0.2), w("roomy", 0, free=0.9)]
    assert names(least_loaded(workers)) == ["roomy", "idle", "busy"]
    # equal workers: the tiebreak decides, so a burst spreads over them
    twins = [w("a"), w("b")]
    assert names(least_loaded(twins, tiebreak=iter([0.9, 0.1]).__next__)) == ["b", "a"]
    assert names(least_loaded(twins, tiebreak=iter([0.1, 0.9]).__next__)) == ["a", "b"]


def test_excluded_and_full_queues_are_skipped() -> None:
    workers = [w("a", 0, waiting=2), w("b", 1), w("c", 2)]
    assert names(least_loaded(workers, exclude={"b"})) == ["a", "c"]
    assert names(least_loaded(workers, max_queue=2)) == ["b", "c"]
    assert names(least_loaded(workers, max_queue=0)) == ["a", "b", "c"]  # 0: no queue limit


def test_queues_full_only_when_every_server_of_the_name_is_full() -> None:
    assert not queues_full([], 2)  # nobody serves it: not found, not full
    assert not queues_full([w("a", waiting=5)], 0)  # no limit
    assert not queues_full([w("a", waiting=2), w("b", waiting=1)], 2)
    assert queues_full([w("a", waiting=2), w("b", waiting=3)], 2)


def test_a_request_tries_at_most_attempts_workers_each_once() -> None:
    route = RoutingPolicy(attempts=2).route("tiny")
    workers = [w("a", 0), w("b", 1), w("c", 2)]
    first = route.next_worker(workers)
    assert first is not None and first.instance == "a"
    assert route.worker_failed("worker a: refused", gone=True)  # gone: stop routing to it
    second = route.next_worker(workers)
    assert second is not None and second.instance == "b"  # a is not tried again
    assert not route.worker_failed("worker b: queue full", gone=False)  # busy: only skipped
    assert route.next_worker(workers) is None  # two attempts spent
    assert route.tried == ["a", "b"]
    refusal = route.refusal(engine_retiring=False, workers=workers, served_names=list)
    assert isinstance(refusal, NoWorker)
    assert str(refusal) == "no worker could serve 'tiny': worker a: refused; worker b: queue full"


def test_no_worker_left_to_try() -> None:
    route = RoutingPolicy().route("tiny")
    assert route.next_worker([]) is None
    assert route.next_worker([w("a", waiting=4)]) is not None
    assert route.next_worker([w("a", waiting=4)]) is None  # tried already


def test_local_engine_tries_and_queue_limit() -> None:
    policy = RoutingPolicy(max_queue=2, local_attempts=2)
    route = policy.route("tiny")
    assert route.take_local(waiting=1) and route.take_local(waiting=0)
    assert not route.take_local(waiting=0)  # every try met an engine retired by a switch
    refusal = route.refusal(engine_retiring=True, workers=[], served_names=list)
    assert isinstance(refusal, NoWorker) and "'tiny' is switching versions, retry" in str(refusal)
    with pytest.raises(Overloaded, match="model 'tiny' has 2 requests waiting"):
        policy.route("tiny").take_local(waiting=2)
    assert RoutingPolicy(max_queue=0).route("tiny").take_local(waiting=100)


def test_when_the_local_pool_may_serve() -> None:
    assert RoutingPolicy().local_allowed(local_only=False, routes_to_workers=True)
    routing_only = RoutingPolicy(local_fallback=False)
    assert not routing_only.local_allowed(local_only=False, routes_to_workers=True)
    assert routing_only.local_allowed(local_only=True, routes_to_workers=True)  # a worker's own request
    assert routing_only.local_allowed(local_only=False, routes_to_workers=False)  # nothing else to route to


def test_refusal_when_nothing_was_tried() -> None:
    route = RoutingPolicy(max_queue=1).route("tiny")
    full = [w("a", waiting=1)]
    assert route.next_worker(full) is None
    assert isinstance(route.refusal(engine_retiring=False, workers=full, served_names=list), Overloaded)
    missing = route.refusal(engine_retiring=False, workers=[], served_names=lambda: ["demo", "demo:1"])
    assert isinstance(missing, ModelNotFound)
    assert str(missing) == "model 'tiny' is not served; served models: demo, demo:1"
