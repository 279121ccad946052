"""What the serving side asks of an engine, whichever runs the model: puyu's own (``core.engine``) or
vLLM's (``core.vllm_engine``). The pool loads, warms, drains and closes engines through it; the router
streams requests into it; the announcer and the metrics read its load."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

from services.inference_gateway.core.engine.output import Completion, Delta
from services.inference_gateway.core.sampling import SamplingParams


class ServingEngine(Protocol):
    name: str
    tokenizer: Any  # a Hugging Face tokenizer (decode, chat template)
    max_positions: int  # the context a prompt and its output share

    # ------------------------------------------------------------------ prompts
    def encode(self, prompt: str) -> list[int]: ...

    def render_chat(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
    ) -> list[int]: ...

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> Any: ...  # the engine itself, serving

    async def drain(self, limit_s: float | None = None) -> bool: ...

    def close(self) -> None: ...

    # ------------------------------------------------------------------ state
    @property
    def in_flight(self) -> int: ...

    @property
    def vocab_size(self) -> int: ...

    def load_info(self) -> dict[str, int]:
        """in_flight, running, waiting, free_blocks, total_blocks, prefix_hit_tokens."""
        ...

    def kv_info(self) -> dict[str, int | str]:
        """kv_dtype, capacity_tokens, block_bytes, kv_cache_bytes, row_cache_bytes."""
        ...

    # ------------------------------------------------------------------ requests
    def stream(
        self, prompt_ids: list[int], params: SamplingParams, request_id: str | None = None
    ) -> AsyncIterator[Delta]: ...

    async def generate(self, prompt_ids: list[int], params: SamplingParams) -> Completion: ...

    def generate_sync(
        self, prompt_ids: list[int], params: SamplingParams, timeout: float = 120
    ) -> Completion: ...


def served_quantization(engine: object) -> str | None:
    """The served model's weight quantisation (``awq-int4-g128`` ...), read from its config; None for
    full-precision weights or an engine that holds no model in this process (vLLM's)."""
    from shared.quantization import describe  # the quantisation package loads transformers: when asked

    config = getattr(getattr(engine, "model", None), "config", None)
    return describe(getattr(config, "quantization_config", None))
