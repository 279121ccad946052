"""Routing across worker processes, in one process: gRPC workers on real ports, the table fed by hand.

The integration tests (``tests/integration/test_gateway_workers.py``) do the same with real
processes, a real nats-server and the KV watch.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest

from contracts.events.inference import ServedLoad, WorkerAnnouncement
from contracts.proto.puyu.inference.v1 import inference_pb2, inference_pb2_grpc
from services.inference_gateway.announce import snapshot
from services.inference_gateway.core.engine import Delta
from services.inference_gateway.core.pool import ModelNotFound, ModelPool
from services.inference_gateway.core.prompts import Prompt
from services.inference_gateway.core.routing import NoWorker, least_loaded, queues_full
from services.inference_gateway.core.sampling import InvalidRequest, SamplingParams
from services.inference_gateway.core.worker_table import WorkerTable
from services.inference_gateway.grpc_api import InferenceServicer
from services.inference_gateway.router import Router
from services.inference_gateway.wire import params_from_proto, prompt_from_request
from shared.natsserver import free_port

GREEDY = SamplingParams(max_tokens=6, temperature=0, stop=("@@@",))


def ann(
    instance: str, running: int = 0, waiting: int = 0, *, age: float = 0.0, target: str = "x:1"
) -> WorkerAnnouncement:
    served = ServedLoad(
        model_name="tiny",
        version=1,
        names=["tiny", "tiny:1", "tiny@champion"],
        state="ready",
        running=running,
        waiting=waiting,
        free_blocks=10,
        total_blocks=10,
    )
    return WorkerAnnouncement(
        instance=instance,
        grpc_target=target,
        served=[served],
        updated_at=datetime.now(UTC) - timedelta(seconds=age),
    )


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_view_orders_by_load_expires_suspends_and_ignores_itself() -> None:
    clock = Clock()
    table = WorkerTable(own_instance="gw", ttl=5.0, clock=clock)

    def candidates(name: str, max_queue: int = 0) -> list[str]:
        return [w.instance for w in least_loaded(table.loads(name), max_queue=max_queue)]

    table.update(ann("busy", running=4, waiting=2))
    table.update(ann("idle", running=1))
    table.update(ann("gw"))  # this process's own pool: never a remote target
    table.update(ann("stale", age=60))  # an old value found in the bucket at start-up
    assert candidates("tiny@champion") == ["idle", "busy"]
    assert candidates("other") == []
    # requests this gateway sent since the last announcement count too
    tickets = [table.begin("idle") for _ in range(6)]
    assert candidates("tiny") == ["busy", "idle"]
    for t in tickets:
        table.end("idle", t)
    # a worker whose queue is full is skipped; when all are full the table says so
    assert candidates("tiny", max_queue=2) == ["idle"]
    assert not queues_full(table.loads("tiny"), 2)
    table.update(ann("idle", running=1, waiting=3))
    assert queues_full(table.loads("tiny"), 2)
    # a failed worker is suspended until it announces again (an announcement made after the failure)
    table.suspend("idle")
    assert candidates("tiny") == ["busy"]
    clock.now += 1
    table.update(ann("idle"))
    assert set(candidates("tiny")) == {"busy", "idle"}
    # no announcement for longer than the ttl: dropped
    clock.now += 5.5
    table.update(ann("busy"))
    assert candidates("tiny") == ["busy"]
    table.remove("busy")
    assert candidates("tiny") == [] and table.names() == []


class _DiesAfterFirstChunk(InferenceServicer):
    """A worker that goes away in the middle of every generation."""

    async def Generate(  # type: ignore[override]
        self, request: inference_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[inference_pb2.GenerateChunk]:
        async for chunk in super().Generate(request, context):
            yield chunk
            await context.abort(grpc.StatusCode.UNAVAILABLE, "worker killed")


@pytest.fixture
async def workers(tiny_model: Path) -> AsyncIterator[dict[str, tuple[grpc.aio.Server, str, ModelPool]]]:
    out: dict[str, tuple[grpc.aio.Server, str, ModelPool]] = {}
    for name in ("a", "b", "flaky"):
        pool = ModelPool()
        await pool.deploy("tiny", 1, tiny_model)
        server = grpc.aio.server()
        cls = _DiesAfterFirstChunk if name == "flaky" else InferenceServicer
        inference_pb2_grpc.add_InferenceServicer_to_server(cls(Router(pool, instance=name)), server)
        port = server.add_insecure_port(f"127.0.0.1:{free_port()}")
        await server.start()
        out[name] = (server, f"127.0.0.1:{port}", pool)
    yield out
    for server, _, pool in out.values():
        await server.stop(None)
        await pool.close()


def table_of(workers: dict[str, tuple[grpc.aio.Server, str, ModelPool]], **load: int) -> WorkerTable:
    table = WorkerTable(own_instance="gw")
    for name, running in load.items():
        a = snapshot(workers[name][2], name, None, workers[name][1])
        a.served[0].running = running
        table.update(a)
    return table


async def collect(stream: AsyncIterator[Delta]) -> list[Delta]:
    return [d async for d in stream]


async def test_routes_to_the_least_loaded_and_moves_off_a_dead_worker(workers, tiny_model: Path) -> None:
    local = ModelPool()
    await local.deploy("tiny", 1, tiny_model)
    try:
        want = await collect(await Router(local).open("tiny", Prompt(text="The river"), GREEDY))
        router = Router(None, table_of(workers, a=3, b=0), instance="gw")
        got = await collect(await router.open("tiny@champion", Prompt(text="The river"), GREEDY))
        assert {d.worker for d in got} == {"b"}
        assert "".join(d.text for d in got) == "".join(d.text for d in want)
        assert got[-1].finish_reason == want[-1].finish_reason
        # b stops: the request goes to a, and b is not tried again until it announces
        await workers["b"][0].stop(None)
        got = await collect(await router.open("tiny", Prompt(text="The river"), GREEDY))
        assert {d.worker for d in got} == {"a"}
        assert router.workers is not None
        assert [w.instance for w in least_loaded(router.workers.loads("tiny"))] == ["a"]
        # invalid requests are not retried elsewhere; unknown names say what is served
        with pytest.raises(InvalidRequest, match="You passed 300 input tokens and requested 6 output tokens"):
            await router.open("tiny", Prompt(ids=tuple(range(300))), GREEDY)
        with pytest.raises(ModelNotFound, match="served models: tiny"):
            await router.open("nope", Prompt(text="x"), GREEDY)
        await workers["a"][0].stop(None)
        with pytest.raises(NoWorker, match="no worker could serve 'tiny'"):
            await router.open("tiny", Prompt(text="x"), GREEDY)
        # with an in-process pool the gateway falls back to it when no worker is left
        fallback = Router(local, router.workers, instance="gw")
        got = await collect(await fallback.open("tiny", Prompt(text="The river"), GREEDY))
        assert {d.worker for d in got} == {"gw"}
        await router.close()
    finally:
        await local.close()


async def test_a_worker_lost_mid_generation(workers) -> None:
    # streaming: tokens already went out, so the stream ends in an error naming the worker
    router = Router(None, table_of(workers, flaky=0, a=5), instance="gw")
    params = SamplingParams(max_tokens=30, temperature=0, stop=("@@@",))
    got = await collect(await router.open("tiny", Prompt(text="The river"), params))
    assert got[0].worker == "flaky" and got[-1].finish_reason == "error" and "flaky" in (got[-1].error or "")
    await router.close()
    # whole (non-streaming): nothing went out yet, so the request runs again on the next worker
    router = Router(None, table_of(workers, flaky=0, a=5), instance="gw")
    got = await collect(await router.open("tiny", Prompt(text="The river"), params, whole=True))
    assert {d.worker for d in got} == {"a"} and got[-1].finish_reason in ("stop", "length")
    await router.close()


async def test_full_options_cross_the_wire(workers, tiny_model: Path) -> None:
    """Logprobs, prompt logprobs, scoring only, echo, ignore_eos / min_tokens, chat rendering and
    constrained JSON give the same over gRPC as in-process."""
    local = ModelPool()
    await local.deploy("tiny", 1, tiny_model)
    remote = Router(None, table_of(workers, a=0), instance="gw")
    try:
        cases = [
            (
                Prompt(text="The river runs"),
                SamplingParams(max_tokens=4, temperature=0, logprobs=2, prompt_logprobs=True),
            ),
            (
                Prompt(messages=[{"role": "user", "content": "Where is velm?"}]),
                SamplingParams(max_tokens=5, temperature=0),
            ),
            (
                Prompt(ids=(5, 9, 12)),
                SamplingParams(max_tokens=5, temperature=0.8, seed=7, repetition_penalty=1.3),
            ),
            (
                Prompt(text="Answer:"),
                SamplingParams(max_tokens=12, temperature=0, json_schema='{"type": "object"}'),
            ),
            (  # lm-eval's scoring request: prompt logprobs only, nothing generated
                Prompt(ids=(5, 9, 12, 40)),
                SamplingParams(max_tokens=0, temperature=0, prompt_logprobs=True, echo=True, logprobs=1),
            ),
            (
                Prompt(text="The river"),
                SamplingParams(
                    max_tokens=6, temperature=0, ignore_eos=True, min_tokens=4, skip_special_tokens=False
                ),
            ),
        ]
        for prompt, params in cases:
            want = await collect(await Router(local).open("tiny", prompt, params))
            if params.prompt_logprobs:  # the comparison means something: there are logprobs to compare
                assert want[0].prompt_logprobs is not None and want[0].prompt_first_token
                assert want[0].logprobs or params.max_tokens == 0
            got = await collect(await remote.open("tiny", prompt, params))
            assert [(d.text, d.finish_reason, d.logprobs) for d in got] == [
                (d.text, d.finish_reason, d.logprobs) for d in want
            ]
            assert got[0].prompt_logprobs == want[0].prompt_logprobs
            assert got[0].prompt_first_token == want[0].prompt_first_token
            assert got[0].prompt_text == want[0].prompt_text
            assert sum(d.completion_tokens for d in got[-1:]) == sum(d.completion_tokens for d in want[-1:])
    finally:
        await remote.close()
        await local.close()


async def test_a_replayed_older_promotion_does_not_switch_back(tiny_model: Path) -> None:
    """A new worker's consumer replays past promotions after its start-up restore: older ones change nothing."""
    pool = ModelPool()
    t0 = datetime.now(UTC)
    try:
        assert await pool.deploy("tiny", 2, tiny_model, as_of=t0) is not None  # the restore: v2 is champion
        assert pool.stale("tiny", t0 - timedelta(minutes=5))
        assert await pool.deploy("tiny", 1, tiny_model, as_of=t0 - timedelta(minutes=5)) is None
        assert pool.serving("tiny", 2) and not pool.serving("tiny", 1)
        # a promotion after the restore (a rollback to v1, say) is newer: it switches
        assert await pool.deploy("tiny", 1, tiny_model, as_of=t0 + timedelta(seconds=1)) is not None
        assert pool.serving("tiny", 1)
        assert await pool.drain(5)  # a stopping worker: nothing in flight, drained at once
    finally:
        await pool.close()


def test_bad_worker_requests_say_what_is_wrong() -> None:
    def req(**kw: object) -> inference_pb2.GenerateRequest:
        return inference_pb2.GenerateRequest(model="tiny", **kw)  # type: ignore[arg-type]

    with pytest.raises(InvalidRequest, match="exactly one of prompt, prompt_ids or chat_json"):
        prompt_from_request(req())
    with pytest.raises(InvalidRequest, match="exactly one of"):
        prompt_from_request(req(prompt="a", prompt_ids=[1, 2]))
    with pytest.raises(InvalidRequest, match="chat_json is not JSON"):
        prompt_from_request(req(chat_json="{messages"))
    with pytest.raises(InvalidRequest, match="non-empty list of message objects"):
        prompt_from_request(req(chat_json='{"messages": []}'))
    with pytest.raises(InvalidRequest, match="'tools' must be a list"):
        prompt_from_request(req(chat_json='{"messages": [{"role": "user", "content": "hi"}], "tools": {}}'))
    assert prompt_from_request(req(prompt_ids=[3, 4])).ids == (3, 4)
    with pytest.raises(InvalidRequest, match="temperature must be >= 0"):
        params_from_proto(inference_pb2.SamplingParams(temperature=-1), 16)
