"""From callers to vLLM's event loop and back: a loop in a thread, and puyu's request bridge sending
requests there instead of to an engine thread's inbox (it still counts requests in flight, refuses new
ones while draining, answers ``drain`` and hands deltas to each caller's event loop or thread).

Hand-written: vLLM's ``AsyncLLM`` must be driven from the one event loop its output handler runs on,
while the pool warms engines from plain threads and the gRPC server streams from its own loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

from services.inference_gateway.core.engine.bridge import EngineClosed, RequestBridge
from services.inference_gateway.core.engine.sequence import Request

T = TypeVar("T")


@dataclass(eq=False)
class VllmRequest(Request):
    """A request on its way to vLLM: its task on the engine's loop, cancelled with the request."""

    vllm_params: Any = None
    future: Future[None] | None = None
    rejected: str | None = None  # vLLM refused it before generating (its reason)

    def cancel(self) -> None:
        super().cancel()
        if self.future is not None:
            self.future.cancel()  # thread-safe: cancels the task on the engine's loop


class VllmBridge(RequestBridge):
    """puyu's bridge, but a request goes to vLLM's loop instead of an engine thread's inbox."""

    def __init__(self, name: str, dispatch: Callable[[Request], None]) -> None:
        super().__init__(name)
        self._dispatch = dispatch

    def put(self, request: Request) -> Request:
        with self._lock:
            if not self.accepting:
                raise EngineClosed(f"engine {self.name!r} is not accepting requests")
            self.in_flight += 1
        self._dispatch(request)
        return request


class LoopThread:
    """An event loop of its own in a daemon thread: where ``AsyncLLM`` lives and is called."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def stop(self, timeout: float = 30) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout)
        if not self.thread.is_alive():
            self.loop.close()
