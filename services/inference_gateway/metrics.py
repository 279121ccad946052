"""Prometheus metrics of the gateway (served at ``/metrics``): requests, rejections, TTFT, tokens, engine load."""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from services.inference_gateway.core.engine import Delta
    from services.inference_gateway.core.pool import ModelPool

REQUESTS = Counter("puyu_gateway_requests", "Finished OpenAI API requests.", ["model", "outcome"])
REJECTED = Counter("puyu_gateway_rejected", "Requests refused at admission.", ["reason"])
TTFT = Histogram(
    "puyu_gateway_time_to_first_token_seconds",
    "Time from request to its first token.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
OUTPUT_TOKENS = Counter("puyu_gateway_output_tokens", "Generated tokens.", ["finish_reason"])


def observe_request(model: str, outcome: str, ttft: float | None) -> None:
    REQUESTS.labels(model, outcome).inc()
    if ttft is not None:
        TTFT.observe(ttft)


def observe_delta(d: Delta) -> None:
    if d.finish_reason:
        OUTPUT_TOKENS.labels(d.finish_reason).inc(d.completion_tokens)


class _PoolCollector(Collector):
    """Engine load of every live pool, read at scrape time."""

    def __init__(self) -> None:
        self.pools: weakref.WeakSet[ModelPool] = weakref.WeakSet()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        fams = {
            k: GaugeMetricFamily(f"puyu_engine_{k}", f"Engine {k.replace('_', ' ')}.", labels=["engine"])
            for k in ("running", "waiting", "free_blocks", "total_blocks", "prefix_hit_tokens")
        }
        for pool in list(self.pools):
            for served in pool.current():
                info = served.engine.load_info()
                for k, fam in fams.items():
                    fam.add_metric([served.engine.name], info[k])
        yield from fams.values()


_collector = _PoolCollector()
REGISTRY.register(_collector)


def watch_pool(pool: ModelPool) -> None:
    _collector.pools.add(pool)
