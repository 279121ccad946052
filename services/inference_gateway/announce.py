"""Announce this worker's served versions and load in the ``puyu_workers`` KV bucket, every few seconds."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime

from contracts.events.inference import ServedLoad, WorkerAnnouncement
from contracts.events.subjects import WORKERS_BUCKET
from services.inference_gateway.core.engine_api import served_quantization
from services.inference_gateway.core.pool import ModelPool
from shared.bus import Bus

log = logging.getLogger(__name__)


def snapshot(
    pool: ModelPool, instance: str, http_url: str | None, grpc_target: str | None
) -> WorkerAnnouncement:
    served = []
    for s in pool.current():
        info, kv = s.engine.load_info(), s.engine.kv_info()
        served.append(
            ServedLoad(
                model_name=s.model_name,
                version=s.version,
                names=[n for n, e in pool.named() if e is s],
                state=s.state,
                running=info["running"],
                waiting=info["waiting"],
                free_blocks=info["free_blocks"],
                total_blocks=info["total_blocks"],
                kv_dtype=str(kv["kv_dtype"]),
                kv_capacity_tokens=int(kv["capacity_tokens"]),
                quantization=served_quantization(s.engine),
            )
        )
    return WorkerAnnouncement(
        instance=instance,
        http_url=http_url,
        grpc_target=grpc_target,
        served=served,
        updated_at=datetime.now(UTC),
    )


class Announcer:
    def __init__(
        self,
        bus: Bus,
        pool: ModelPool,
        instance: str,
        *,
        interval: float = 5.0,
        http_url: str | None = None,
        grpc_target: str | None = None,
    ) -> None:
        self.bus, self.pool, self.instance, self.interval = bus, pool, instance, interval
        self.http_url, self.grpc_target = http_url, grpc_target
        self._task: asyncio.Task[None] | None = None

    async def announce(self) -> None:
        kv = await self.bus.key_value(WORKERS_BUCKET)
        value = snapshot(self.pool, self.instance, self.http_url, self.grpc_target)
        await kv.put(self.instance, value.model_dump_json().encode())

    async def _loop(self) -> None:
        while True:
            if self.bus.started:
                try:
                    await self.announce()
                except Exception as exc:  # the bus reconnects by itself: announce again next time
                    log.warning("announcing %s failed: %s: %s", self.instance, type(exc).__name__, exc)
            await asyncio.sleep(self.interval if self.bus.started else 0.1)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def withdraw(self) -> None:
        """Stop announcing and delete this worker's entry, so routers drop it now rather than when its
        last announcement expires; the requests it already runs still finish."""
        await self.stop()
        kv = await self.bus.key_value(WORKERS_BUCKET)
        await kv.delete(self.instance)
        log.info("%s withdrawn from %s", self.instance, WORKERS_BUCKET)
