"""The limits a gateway puts on requests: API keys, per-key rates, queue lengths, time."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Limits:
    """Read at each request, so a change applies to the next one."""

    api_keys: tuple[str, ...] = ()  # empty: no key needed
    requests_per_minute: float = 0  # per key; 0: unlimited
    burst: int = 0  # bucket size; 0: one minute's worth
    max_queue: int = 0  # waiting requests per engine before 503; 0: unlimited
    request_timeout_s: float = 0  # whole request; 0: none
