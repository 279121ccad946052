"""Where a request runs: the least-loaded live worker process serving its model, else this process's pool.

``Router.open`` picks a worker from the ``WorkerView`` (announcements), starts the request there and
waits for its first delta; a worker that is gone before the first token (connection refused, killed,
stopped) is suspended and the request tries the next one, up to ``attempts`` workers. When no worker
process serves the name, the in-process pool does (when the gateway has one and ``local_fallback``).
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
from services.inference_gateway.core.prompts import Prompt
from services.inference_gateway.core.sampling import SamplingParams
from services.inference_gateway.pool import ModelNotFound, ModelPool
from services.inference_gateway.remote import WorkerBusy, WorkerClients, WorkerGone
from services.inference_gateway.workers import WorkerView

log = logging.getLogger(__name__)

ROUTED = Counter("puyu_gateway_routed", "Requests started, by the worker that took them.", ["worker"])
RETRIED = Counter("puyu_gateway_worker_retries", "Requests moved to another worker before their first token.")


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
class ModelEntry:
    name: str
    model_name: str
    version: int
    state: str
    worker: str


class Router:
    def __init__(
        self,
        pool: ModelPool | None,
        view: WorkerView | None = None,
        clients: WorkerClients | None = None,
        *,
        instance: str = "local",
        attempts: int = 3,
        max_queue: int = 0,
        local_fallback: bool = True,
    ) -> None:
        self.pool, self.view = pool, view
        self.clients = clients or WorkerClients()
        self.instance, self.attempts, self.max_queue = instance, attempts, max_queue
        self.local_fallback = local_fallback

    # ------------------------------------------------------------------------------ listings
    def models(self, with_draining: bool = False) -> list[ModelEntry]:
        """Every served name: this process's pool first, then the live workers'."""
        out: list[ModelEntry] = []
        if self.pool is not None:
            pairs = self.pool.entries() if with_draining else self.pool.named()
            out += [ModelEntry(n, s.model_name, s.version, s.state, self.instance) for n, s in pairs]
        if self.view is not None:
            out += [ModelEntry(n, m, v, "ready", w) for n, m, v, w in self.view.names()]
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

        def left() -> float | None:
            return None if deadline is None else max(0.0, deadline - time.monotonic())

        tried: list[str] = []
        errors: list[str] = []
        local_tries = 0
        while True:
            view = None if local_only else self.view
            found = view.candidates(name, exclude=tried, max_queue=self.max_queue) if view else []
            if found and view is not None and len(tried) < self.attempts:
                worker = found[0].worker.instance
                tried.append(worker)
                ticket = view.begin(worker)
                stream = self.clients.stream(worker, found[0].target, name, prompt, params, whole=whole)
                try:
                    first = await asyncio.wait_for(anext(stream), left())
                except (WorkerGone, WorkerBusy) as exc:
                    view.end(worker, ticket)
                    if isinstance(exc, WorkerGone):
                        view.suspend(worker)
                        self.clients.forget(found[0].target)
                    errors.append(str(exc))
                    RETRIED.inc()
                    log.info("request for %s moves on from %s: %s", name, worker, exc)
                    continue
                except BaseException:
                    view.end(worker, ticket)
                    await stream.aclose()
                    raise
                ROUTED.labels(worker).inc()
                return _chain(first, stream, functools.partial(view.end, worker, ticket))
            engine = None
            if self.pool is not None and (local_only or self.local_fallback or self.view is None):
                try:
                    engine = self.pool.resolve(name)
                except ModelNotFound:
                    engine = None
            if engine is not None and local_tries < 3:
                local_tries += 1
                if self.max_queue and engine.load_info()["waiting"] >= self.max_queue:
                    raise Overloaded(name, self.max_queue)
                local = engine.stream(prompt.token_ids(engine), params)
                try:
                    first = await asyncio.wait_for(anext(local), left())
                except EngineClosed:  # a switch retired the engine between resolve and submit
                    continue
                except BaseException:
                    await local.aclose()  # type: ignore[attr-defined]
                    raise
                ROUTED.labels(self.instance).inc()
                return _chain(first, local, None, stamp=self.instance)
            if engine is not None:  # still retiring after three tries
                errors.append(f"model {name!r} is switching versions, retry")
            if errors:
                raise NoWorker(name, errors)
            if view is not None and view.full(name, self.max_queue):
                raise Overloaded(name, self.max_queue)
            raise ModelNotFound(name, self.served_names())

    async def close(self) -> None:
        await self.clients.close()


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
