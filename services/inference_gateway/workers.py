"""Worker announcements from the ``puyu_workers`` KV bucket into a ``WorkerTable``, by a KV watch."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import nats.errors
from pydantic import ValidationError

from contracts.events.inference import WorkerAnnouncement
from contracts.events.subjects import WORKERS_BUCKET
from services.inference_gateway.core.worker_table import WorkerTable
from shared.bus import Bus

log = logging.getLogger(__name__)


class WorkerWatch:
    def __init__(self, bus: Bus, table: WorkerTable) -> None:
        self.bus, self.table = bus, table
        self._task: asyncio.Task[None] | None = None
        self.synced = asyncio.Event()  # the initial contents of the bucket have been read

    async def start(self) -> None:
        self._task = asyncio.create_task(self._watch())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _watch(self) -> None:
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
                        entry = await watcher.updates(timeout=self.table.ttl)
                    except nats.errors.TimeoutError:
                        break
                    if entry is None:  # the end of what the bucket held when the watch began
                        self.synced.set()
                    elif entry.operation in ("DEL", "PURGE"):
                        self.table.remove(entry.key)
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
            announcement = WorkerAnnouncement.model_validate_json(value)
        except ValidationError as exc:
            log.warning("ignoring a malformed announcement under %r: %s", key, exc.errors()[:1])
            return
        self.table.update(announcement)
