"""Admission of OpenAI API requests: the caller (shared.auth: API keys are tokens), per-caller rate
limits (429), queue limits (503 + Retry-After), timeouts."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from typing import Any

from services.inference_gateway.core.engine import Delta
from services.inference_gateway.core.limits import Limits
from services.inference_gateway.metrics import REJECTED, observe_request
from shared.auth import Principal, Role
from shared.auth.http import requires

# Generation changes no state: a reader may do it (the gateway's API keys are readers).
CALLER = requires(Role.READER)


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        type_: str,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.headers = status, message, type_, code, headers


class _Bucket:
    """Token bucket: ``rate`` tokens per second up to ``size``."""

    def __init__(self, rate: float, size: float) -> None:
        self.rate, self.size, self.level, self.at = rate, size, size, time.monotonic()

    def take(self) -> float:
        """0 when admitted, else the seconds until a token is there."""
        now = time.monotonic()
        self.level = min(self.size, self.level + (now - self.at) * self.rate)
        self.at = now
        if self.level >= 1:
            self.level -= 1
            return 0.0
        return (1 - self.level) / self.rate


class Admission:
    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._buckets: dict[str, _Bucket] = {}

    def authorize(self, principal: Principal = CALLER) -> str:
        return principal.name

    def admit(self, principal: Principal = CALLER) -> str:
        key = principal.name
        rpm = self.limits.requests_per_minute
        if rpm > 0:
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = _Bucket(rpm / 60, self.limits.burst or max(1.0, rpm))
            wait = bucket.take()
            if wait:
                REJECTED.labels("rate_limit").inc()
                raise APIError(
                    429,
                    f"rate limit of {rpm:g} requests per minute reached for this API key",
                    "rate_limit_error",
                    "rate_limit_exceeded",
                    {"Retry-After": str(math.ceil(wait))},
                )
        return key

    def time_left(self, t0: float) -> float | None:
        """Seconds left of a request that started at ``t0`` (monotonic), None without a timeout."""
        limit = self.limits.request_timeout_s
        return None if not limit else max(0.0, t0 + limit - time.monotonic())

    def rejected(self, reason: str) -> None:
        REJECTED.labels(reason).inc()

    async def timed(
        self, stream: AsyncIterator[tuple[int, Delta]], model: str, t0: float, *, streaming: bool = True
    ) -> AsyncIterator[tuple[int, Delta]]:
        """Pass deltas through, record metrics, and end the request at its timeout (cancelling generation)."""
        limit = self.limits.request_timeout_s
        first: float | None = None
        outcome = "ok"
        it: Any = stream.__aiter__()
        try:
            while True:
                left = None if not limit else max(0.0, t0 + limit - time.monotonic())
                try:
                    i, d = await asyncio.wait_for(it.__anext__(), left)
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    outcome = "timeout"
                    msg = f"request timed out after {limit:g}s"
                    if not streaming:
                        raise APIError(504, msg, "server_error", "timeout") from None
                    yield 0, Delta("", 0, 0, "error", error=msg)
                    return
                if first is None:
                    first = time.monotonic() - t0
                if d.finish_reason == "error":
                    outcome = "error"
                yield i, d
        finally:
            await it.aclose()
            observe_request(model, outcome, first)
