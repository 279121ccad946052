"""The streams of one request's choices: started ahead, peeked at, and merged as their deltas come."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from services.inference_gateway.core.engine import Delta
from services.inference_gateway.metrics import observe_delta


class PeekableStream:
    """A started stream whose first delta can be looked at (for the worker header) before it is consumed."""

    def __init__(self, stream: AsyncIterator[Delta]) -> None:
        self._stream = stream
        self._first: Delta | None = None

    async def worker(self) -> str:
        """The worker that runs this stream (read from its first delta)."""
        if self._first is None:
            self._first = await anext(self._stream)
        return self._first.worker

    def __aiter__(self) -> AsyncIterator[Delta]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Delta]:
        if self._first is not None:
            first, self._first = self._first, None
            yield first
            if first.finish_reason is not None:
                return
        async for d in self._stream:
            yield d

    async def aclose(self) -> None:
        await self._stream.aclose()  # type: ignore[attr-defined]  # cancels the generation if unfinished


async def merge_streams(streams: list[PeekableStream]) -> AsyncIterator[tuple[int, Delta]]:
    """(choice index, delta) of every stream as the deltas come; closing this closes (cancels) them all."""
    if len(streams) == 1:
        try:
            async for d in streams[0]:
                observe_delta(d)
                yield 0, d
        finally:
            await streams[0].aclose()
        return
    queue: asyncio.Queue[tuple[int, Delta | BaseException | None]] = asyncio.Queue()

    async def pump(i: int, stream: PeekableStream) -> None:
        try:
            async for d in stream:
                await queue.put((i, d))
        except BaseException as exc:
            await queue.put((i, exc))
        finally:
            await queue.put((i, None))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    still_open = len(tasks)
    try:
        while still_open:
            i, item = await queue.get()
            if item is None:
                still_open -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                observe_delta(item)
                yield i, item
    finally:
        for t in tasks:
            t.cancel()
        for s in streams:
            await s.aclose()
