"""Between callers (event loops, plain threads) and the engine thread.

Requests go in through a thread-safe inbox; deltas come back through each request's sink, which for
an asyncio caller posts to a per-request ``asyncio.Queue`` on the caller's loop. A caller that stops
reading (a client gone away) cancels its request.
"""

from __future__ import annotations

import asyncio
import collections
import queue
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable

from services.inference_gateway.core.engine.output import Delta
from services.inference_gateway.core.engine.sequence import Request

Sink = Callable[[Delta], None]


class EngineClosed(RuntimeError):
    """The engine stopped accepting requests (it is draining or closed)."""


class RequestBridge:
    """The inbox of submitted requests and the count of those not finished yet."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._inbox: queue.Queue[Request | None] = queue.Queue()  # None: the engine is closing
        self.accepting = True
        self.in_flight = 0
        self.finished: collections.Counter[str] = collections.Counter()  # finish reasons, for metrics/tests
        self._lock = threading.Lock()

    # ------------------------------------------------------------------------------ callers' side
    def put(self, request: Request) -> Request:
        with self._lock:
            if not self.accepting:
                raise EngineClosed(f"engine {self.name!r} is not accepting requests")
            self.in_flight += 1
        self._inbox.put(request)
        return request

    @property
    def queued(self) -> int:
        """Requests submitted but not taken by the engine thread yet."""
        return self._inbox.qsize()

    async def drain(self, limit_s: float | None = None) -> bool:
        """Stop taking requests and wait until the ones in flight finish. True when drained."""
        self.accepting = False
        deadline = None if limit_s is None else time.monotonic() + limit_s
        while self.in_flight:
            if deadline is not None and time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    def signal_stop(self) -> None:
        """Tell the engine thread to stop (after the requests already in the inbox)."""
        self._inbox.put(None)

    # ------------------------------------------------------------------------------ engine thread's side
    def take(self, block: bool) -> tuple[list[Request], bool]:
        """The requests submitted since the last call (waiting for one when ``block``), and whether to stop."""
        taken: list[Request] = []
        while True:
            try:
                request = self._inbox.get(block=block)
            except queue.Empty:
                return taken, False
            block = False
            if request is None:
                return taken, True
            taken.append(request)

    def finished_one(self, reason: str) -> None:
        with self._lock:
            self.in_flight -= 1
            self.finished[reason] += 1

    # ------------------------------------------------------------------------------ delivery
    async def stream(self, submit: Callable[[Sink], Request]) -> AsyncIterator[Delta]:
        """Submit a request with a sink on this event loop and yield its deltas.

        Closing the iterator before the last delta (the client went away) cancels the request.
        """
        deltas: asyncio.Queue[Delta] = asyncio.Queue()
        mailbox = _mailbox(asyncio.get_running_loop())

        def sink(delta: Delta) -> None:
            mailbox.post(deltas, delta)

        request = submit(sink)
        finished = False
        try:
            while True:
                delta = await deltas.get()
                finished = delta.finish_reason is not None
                yield delta
                if finished:
                    return
        finally:
            if not finished:
                request.cancel()

    def wait(self, submit: Callable[[Sink], Request], timeout: float) -> list[Delta]:
        """Submit a request and block this thread (one without an event loop) until its last delta."""
        done = threading.Event()
        deltas: list[Delta] = []

        def sink(delta: Delta) -> None:
            deltas.append(delta)
            if delta.finish_reason is not None:
                done.set()

        submit(sink)
        if not done.wait(timeout):
            raise TimeoutError(f"engine {self.name!r} did not answer within {timeout}s")
        return deltas


class _Mailbox:
    """Deltas from the engine thread to one event loop, handed over in one wake-up per batch.

    A step emits a delta for every running sequence; waking the loop once per delta
    (``call_soon_threadsafe`` each) costs a self-pipe write and a GIL hand-off apiece.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._items: list[tuple[asyncio.Queue[Delta], Delta]] = []
        self._lock = threading.Lock()
        self._scheduled = False

    def post(self, deltas: asyncio.Queue[Delta], delta: Delta) -> None:
        with self._lock:
            self._items.append((deltas, delta))
            if self._scheduled:
                return
            self._scheduled = True
        self.loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        with self._lock:
            items, self._items, self._scheduled = self._items, [], False
        for deltas, delta in items:
            deltas.put_nowait(delta)


_mailboxes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Mailbox] = weakref.WeakKeyDictionary()


def _mailbox(loop: asyncio.AbstractEventLoop) -> _Mailbox:
    mailbox = _mailboxes.get(loop)
    if mailbox is None:
        mailbox = _mailboxes[loop] = _Mailbox(loop)
    return mailbox
