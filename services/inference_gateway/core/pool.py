"""The model pool: served names → engines, with blue/green switches that lose no request.

A version is served as ``<model>``, ``<model>:<version>`` and ``<model>@champion``. Deploying a new
version loads and warms it off the event loop, swaps every name in one assignment, then drains the
old engine (its in-flight requests finish on it) and frees it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from services.inference_gateway.core.engine import Engine
from services.inference_gateway.core.engine_api import ServingEngine
from services.inference_gateway.core.sampling import SamplingParams

log = logging.getLogger(__name__)


class ModelNotFound(KeyError):
    def __init__(self, name: str, served: list[str]) -> None:
        super().__init__(name)
        self.name, self.served = name, served

    def __str__(self) -> str:
        return f"model {self.name!r} is not served; served models: {', '.join(self.served) or 'none'}"


@dataclass
class Served:
    model_name: str
    version: int
    engine: ServingEngine
    state: str = "ready"  # loading | ready | draining

    def names(self, alias: str = "champion") -> list[str]:
        return [self.model_name, f"{self.model_name}:{self.version}", f"{self.model_name}@{alias}"]


EngineLoader = Callable[[Path, str], ServingEngine]  # puyu's Engine.load, VllmEngine.load


class ModelPool:
    def __init__(self, loader: EngineLoader | None = None, drain_timeout: float = 300.0) -> None:
        self._loader = loader or (lambda path, name: Engine.load(path, name=name))
        self._current: dict[str, Served] = {}  # model name -> the version serving it
        self._names: dict[str, Served] = {}
        self._draining: list[Served] = []
        self._as_of: dict[str, datetime] = {}  # model name -> when the served version was decided
        self._lock = asyncio.Lock()
        self.drain_timeout = drain_timeout

    # ------------------------------------------------------------------------------ lookups
    def resolve(self, name: str) -> ServingEngine:
        served = self._names.get(name)
        if served is None:
            raise ModelNotFound(name, sorted(self._names))
        return served.engine

    def named(self) -> list[tuple[str, Served]]:
        return sorted(self._names.items())

    def current(self) -> list[Served]:
        """Every version with an engine: the ones serving, then the ones draining."""
        return [*self._current.values(), *self._draining]

    def served_names(self) -> list[str]:
        return sorted(self._names)

    def entries(self) -> list[tuple[str, Served]]:
        """(served name, entry) for every name, then the versions still draining."""
        out = sorted(self._names.items())
        out += [(f"{s.model_name}:{s.version}", s) for s in self._draining]
        return out

    def stale(self, model_name: str, as_of: datetime) -> bool:
        """True when what is served for the model was decided at or after ``as_of``."""
        decided = self._as_of.get(model_name)
        return decided is not None and as_of <= decided

    def serving(self, model_name: str, version: int) -> bool:
        cur = self._current.get(model_name)
        return cur is not None and cur.version == version

    # ------------------------------------------------------------------------------ deploy
    async def deploy(
        self,
        model_name: str,
        version: int,
        path: Path,
        *,
        wait_drain: bool = True,
        as_of: datetime | None = None,
    ) -> Served | None:
        """Load, warm and switch to ``model_name`` version ``version``; drain and free the old one.

        ``as_of``: when the decision to serve this version was made (the promotion event's time, or
        when the registry was asked for its champions). A decision older than the one behind what is
        served is stale and changes nothing (returns None): a worker replaying the promotions of the
        past after a start-up restore, or a restore finishing after a newer promotion, must not
        switch back to an old version.
        """
        as_of = as_of or datetime.now(UTC)
        async with self._lock:  # one switch at a time per pool
            if self.stale(model_name, as_of):
                log.info("not deploying %s:%d: decided %s, before what is served", model_name, version, as_of)
                return None
            if self.serving(model_name, version):
                self._as_of[model_name] = as_of
                return self._current[model_name]
            engine = await asyncio.to_thread(self._load_and_warm, path, f"{model_name}:{version}")
            new = Served(model_name, version, engine)
            old = self._current.get(model_name)
            names = dict(self._names)
            if old is not None:
                for n in old.names():
                    names.pop(n, None)
            names.update(dict.fromkeys(new.names(), new))
            # the switch: one assignment each, no await in between, so no request sees a half state
            self._names, self._current[model_name] = names, new
            self._as_of[model_name] = as_of
            log.info("serving %s:%d", model_name, version)
        if old is not None:
            old.state = "draining"
            self._draining.append(old)
            task = self._retire(old)
            if wait_drain:
                await task
            else:
                asyncio.create_task(task)  # noqa: RUF006 - the pool keeps the entry until it is done
        return new

    def _load_and_warm(self, path: Path, name: str) -> ServingEngine:
        engine = self._loader(path, name).start()
        try:
            warm_ids = engine.encode("Hello") or [engine.tokenizer.bos_token_id or 0]
            engine.generate_sync(warm_ids, SamplingParams(max_tokens=2, temperature=0))
        except Exception:
            engine.close()
            raise
        return engine

    async def _retire(self, old: Served) -> None:
        drained = await old.engine.drain(self.drain_timeout)
        if not drained:
            log.warning(
                "%s:%d still had %d request(s) after %.0fs; cancelling them",
                old.model_name,
                old.version,
                old.engine.in_flight,
                self.drain_timeout,
            )
        await asyncio.to_thread(old.engine.close)
        self._draining.remove(old)
        log.info("retired %s:%d", old.model_name, old.version)

    async def drain(self, limit_s: float) -> bool:
        """Stop taking requests on every engine and wait for the ones in flight (a stopping worker)."""
        engines = {id(s.engine): s.engine for s in self.current()}.values()
        results = await asyncio.gather(*(e.drain(limit_s) for e in engines))
        return all(results)

    async def close(self) -> None:
        engines = {id(s.engine): s.engine for s in [*self._current.values(), *self._draining]}
        self._names, self._current, self._draining = {}, {}, []
        for engine in engines.values():
            await asyncio.to_thread(engine.close)
