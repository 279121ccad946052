"""Runs the routing policy's decisions: a request goes to a worker process over gRPC, or to this
process's pool, and comes back as one stream of deltas.

``Router.open`` asks the policy (``core.routing``) for the place to try, starts the request there
and waits for its first delta; a worker that is gone before the first token (connection refused,
killed, stopped) is suspended in the ``WorkerTable`` and its channel dropped, and the request tries
the next place the policy names.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from prometheus_client import Counter

from services.inference_gateway.core.engine import Delta, EngineClosed
from services.inference_gateway.core.engine_api import ServingEngine, served_quantization
from services.inference_gateway.core.pool import ModelNotFound, ModelPool
from services.inference_gateway.core.prompts import Prompt
from services.inference_gateway.core.routing import Route, RoutingPolicy, WorkerLoad
from services.inference_gateway.core.sampling import SamplingParams
from services.inference_gateway.core.worker_table import WorkerTable
from services.inference_gateway.remote import WorkerBusy, WorkerClients, WorkerGone

log = logging.getLogger(__name__)

ROUTED = Counter("puyu_gateway_routed", "Requests started, by the worker that took them.", ["worker"])
RETRIED = Counter("puyu_gateway_worker_retries", "Requests moved to another worker before their first token.")


@dataclass(frozen=True)
class ModelEntry:
    name: str
    model_name: str
    version: int
    state: str
    worker: str
    quantization: str | None = None  # awq-int4-g128 ...; None: full-precision weights


class Router:
    def __init__(
        self,
        pool: ModelPool | None,
        workers: WorkerTable | None = None,
        clients: WorkerClients | None = None,
        *,
        instance: str = "local",
        policy: RoutingPolicy | None = None,
    ) -> None:
        self.pool, self.workers = pool, workers
        self.clients = clients or WorkerClients()
        self.instance = instance
        self.policy = policy or RoutingPolicy()

    # ------------------------------------------------------------------------------ listings
    def models(self, with_draining: bool = False) -> list[ModelEntry]:
        """Every served name: this process's pool first, then the live workers'."""
        out: list[ModelEntry] = []
        if self.pool is not None:
            pairs = self.pool.entries() if with_draining else self.pool.named()
            out += [
                ModelEntry(n, s.model_name, s.version, s.state, self.instance, served_quantization(s.engine))
                for n, s in pairs
            ]
        if self.workers is not None:
            out += [ModelEntry(n, m, v, "ready", w, q) for n, m, v, w, q in self.workers.names()]
        return out

    def served_names(self) -> list[str]:
        return sorted({e.name for e in self.models()})

    # ------------------------------------------------------------------------------ requests
    async def open(
        self,
        name: str,
        prompt: Prompt,
        params: SamplingParams,
        *,
        whole: bool = False,
        timeout: float | None = None,
        local_only: bool = False,
    ) -> AsyncIterator[Delta]:
        """Start the request and wait for its first delta; the returned iterator yields it, then the rest.

        ``whole``: the caller answers only at the end (no streaming), so a remote worker's stream is
        held until complete and a worker lost at any point sends the request to another one.
        Raises ``ModelNotFound``, ``InvalidRequest``, ``Overloaded``, ``NoWorker`` or ``TimeoutError``.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        route = self.policy.route(name)
        workers = None if local_only else self.workers
        while True:
            loads = workers.loads(name) if workers is not None else []
            worker = route.next_worker(loads)
            if worker is not None:
                stream = await self._open_on_worker(route, worker, prompt, params, whole, _left(deadline))
                if stream is not None:
                    return stream
                continue
            engine = self._local_engine(name, local_only)
            if engine is not None and route.take_local(engine.load_info()["waiting"]):
                stream = await self._open_locally(engine, prompt, params, _left(deadline))
                if stream is not None:
                    return stream
                continue
            raise route.refusal(
                engine_retiring=engine is not None, workers=loads, served_names=self.served_names
            )

    async def _open_on_worker(
        self,
        route: Route,
        worker: WorkerLoad,
        prompt: Prompt,
        params: SamplingParams,
        whole: bool,
        timeout: float | None,
    ) -> AsyncIterator[Delta] | None:
        """The request's stream from ``worker``, None when the worker failed before the first delta."""
        assert self.workers is not None
        ticket = self.workers.begin(worker.instance)
        stream = self.clients.stream(worker.instance, worker.target, route.name, prompt, params, whole=whole)
        try:
            first = await asyncio.wait_for(anext(stream), timeout)
        except (WorkerGone, WorkerBusy) as exc:
            self.workers.end(worker.instance, ticket)
            if route.worker_failed(str(exc), gone=isinstance(exc, WorkerGone)):
                self.workers.suspend(worker.instance)
                self.clients.forget(worker.target)
            RETRIED.inc()
            log.info("request for %s moves on from %s: %s", route.name, worker.instance, exc)
            return None
        except BaseException:
            self.workers.end(worker.instance, ticket)
            await stream.aclose()
            raise
        ROUTED.labels(worker.instance).inc()
        return _chain(first, stream, functools.partial(self.workers.end, worker.instance, ticket))

    def _local_engine(self, name: str, local_only: bool) -> ServingEngine | None:
        routes_to_workers = self.workers is not None
        if self.pool is None or not self.policy.local_allowed(
            local_only=local_only, routes_to_workers=routes_to_workers
        ):
            return None
        try:
            return self.pool.resolve(name)
        except ModelNotFound:
            return None

    async def _open_locally(
        self, engine: ServingEngine, prompt: Prompt, params: SamplingParams, timeout: float | None
    ) -> AsyncIterator[Delta] | None:
        """The request's stream on this process's engine, None when a switch retired the engine."""
        local = engine.stream(prompt.token_ids(engine), params)
        try:
            first = await asyncio.wait_for(anext(local), timeout)
        except EngineClosed:  # a switch retired the engine between resolve and submit
            return None
        except BaseException:
            await local.aclose()  # type: ignore[attr-defined]
            raise
        ROUTED.labels(self.instance).inc()
        return _chain(first, local, None, stamp=self.instance)

    async def close(self) -> None:
        await self.clients.close()


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


async def _chain(
    first: Delta, rest: AsyncIterator[Delta], on_end: Callable[[], None] | None, stamp: str = ""
) -> AsyncIterator[Delta]:
    """``first``, then the rest; ``stamp``: the worker name for deltas of this process's engines."""
    try:
        yield dataclasses.replace(first, worker=stamp) if stamp else first
        if first.finish_reason is None:
            async for d in rest:
                yield dataclasses.replace(d, worker=stamp) if stamp else d
    finally:
        await rest.aclose()  # type: ignore[attr-defined]  # cancels the generation if unfinished
        if on_end is not None:
            on_end()
