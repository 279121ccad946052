"""The inference engine: one decoder model served by a background thread with continuous batching.

The parts, each usable alone: ``scheduler`` (admission, chunked prefill, paged KV blocks, prefix
caching, preemption), ``ModelRunner`` (the forward over a step's chunks), ``output`` (detokenizing,
logprobs, stop conditions, deltas), ``loop`` (the thread that steps) and ``bridge`` (requests in,
deltas out to event loops or threads). ``Engine`` wires them for one model.
"""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import torch

from services.inference_gateway.core.cpu_linear import pack_linears
from services.inference_gateway.core.engine.bridge import RequestBridge, Sink
from services.inference_gateway.core.engine.loop import EngineLoop
from services.inference_gateway.core.engine.output import Completion, Delta, OutputProcessor, completion_of
from services.inference_gateway.core.engine.sequence import Request
from services.inference_gateway.core.guided import GuideFactory
from services.inference_gateway.core.kv_cache import kv_block_bytes, resolve_kv_cache_dtype
from services.inference_gateway.core.model_runner import ModelRunner
from services.inference_gateway.core.prompts import check_prompt_ids, encode_text, render_chat
from services.inference_gateway.core.sampling import InvalidRequest, SamplingParams, check_context
from shared.hf_models import load_causal_lm, load_tokenizer

T = TypeVar("T")


def in_passing_thread(make: Callable[[], T]) -> T:
    """``make()`` run in a thread of its own that ends with it.

    The loading (weights, dtype casts, packing, cache allocation) runs OpenMP-parallel ops, and
    libgomp keeps a pool of workers for every thread that ever ran one, for as long as that thread
    lives. With more pooled threads than cores (the caller's pool besides the engine thread's own),
    libgomp stops spinning between parallel regions and every op of a step pays a futex wake-up: a
    ~100M model's decode step took 28 ms instead of 17.5 on 2 cores. A thread that ends frees its pool,
    so only the engine thread keeps one.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine-load") as loader:
        return loader.submit(make).result()  # leaving the block joins (ends) the thread


def eos_token_ids(model: Any, tokenizer: Any) -> set[int]:
    """The tokens that end a sequence: the generation config's (one or several), else the tokenizer's."""
    eos = getattr(model.generation_config, "eos_token_id", None) or tokenizer.eos_token_id
    return set(eos if isinstance(eos, list) else [eos] if eos is not None else [])


def cache_blocks(
    model: Any,
    *,
    kv_cache_dtype: str,
    block_size: int,
    max_batch_size: int,
    num_blocks: int | None,
    kv_cache_memory: int | None,
) -> int:
    """How many KV blocks the engine gets: ``num_blocks`` as given; else as many as fit in
    ``kv_cache_memory`` bytes at the chosen dtype's size (8-bit elements plus their scales: an int8
    cache holds about twice the tokens of a 16-bit one); else room for a full batch of sequences at
    the longest useful length. Validates the dtype name and the budget before anything is allocated.
    """
    if num_blocks is not None and kv_cache_memory is not None:
        raise InvalidRequest("give the KV cache either a number of blocks or a memory budget, not both")
    spec = resolve_kv_cache_dtype(kv_cache_dtype, next(model.parameters()).dtype)
    if kv_cache_memory is not None:
        attn = model.model.layers[0].self_attn
        per_block = kv_block_bytes(
            layers=len(model.model.layers),
            kv_heads=model.config.num_key_value_heads,
            head_dim=attn.head_dim,
            block_size=block_size,
            spec=spec,
        )
        if kv_cache_memory < per_block:
            raise InvalidRequest(
                f"a KV cache of {kv_cache_memory} bytes holds no block: one block of {block_size} "
                f"tokens takes {per_block} bytes in {spec.label}"
            )
        return kv_cache_memory // per_block
    if num_blocks is None:
        longest = min(int(getattr(model.config, "max_position_embeddings", 0) or 1 << 30), 2048)
        num_blocks = -(-max_batch_size * longest // block_size) + max_batch_size
    return num_blocks


class Engine:
    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        max_batch_size: int = 16,
        name: str = "model",
        block_size: int = 16,
        num_blocks: int | None = None,
        max_step_tokens: int = 256,
        prefix_caching: bool = True,
        kv_layout: str = "auto",
        kv_cache_dtype: str = "auto",
        kv_cache_memory: int | None = None,
    ) -> None:
        """``kv_cache_dtype``: auto (the model's dtype), int8 or fp8 (8 bits with per token-head
        scales); ``kv_cache_memory``: bytes the paged KV cache may take (instead of ``num_blocks``)."""
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.max_batch_size = max_batch_size
        num_blocks = cache_blocks(
            model,
            kv_cache_dtype=kv_cache_dtype,
            block_size=block_size,
            max_batch_size=max_batch_size,
            num_blocks=num_blocks,
            kv_cache_memory=kv_cache_memory,
        )
        self.runner = ModelRunner(
            model,
            num_blocks=num_blocks,
            block_size=block_size,
            device=next(model.parameters()).device,
            kv_layout=kv_layout,
            max_rows=max_batch_size,
            kv_cache_dtype=kv_cache_dtype,
        )
        # the model's context, or its attention window where that is shorter (the runner attends to
        # the whole context, exact only up to the window)
        self.max_positions = self.runner.max_positions
        self.allocator = self.runner.cache.allocator
        eos_ids = eos_token_ids(model, tokenizer)
        vocab = int(model.get_output_embeddings().weight.shape[0])
        self.guides = GuideFactory(tokenizer, vocab, eos_ids)
        self.output = OutputProcessor(tokenizer, eos_ids, self.max_positions)
        self.bridge = RequestBridge(name)
        self.loop = EngineLoop(
            self.runner,
            self.output,
            self.bridge,
            max_batch_size=max_batch_size,
            max_step_tokens=max(max_step_tokens, max_batch_size),
            prefix_caching=prefix_caching,
        )

    @classmethod
    def load(
        cls,
        path: Path | str,
        *,
        max_batch_size: int = 16,
        name: str | None = None,
        dtype: torch.dtype | str = "auto",
        device: str | None = None,
        **engine_kw: Any,
    ) -> Engine:
        """Load a Hugging Face model folder (weights + tokenizer), on CUDA when there is one.

        Opened by ``shared.hf_models`` (every family it supports; InternLM without running the
        folder's code). ``dtype``: ``auto`` (the checkpoint's on CUDA; on the CPU bf16 where the
        processor multiplies it natively, else fp32), ``bfloat16``, ``float16``, ``float32``; the KV
        cache takes the model's dtype unless ``kv_cache_dtype`` (int8, fp8) says otherwise, sampling
        and logprobs run on fp32 logits whatever it is. ``engine_kw``: ``Engine``'s keywords, e.g.
        ``Engine.load(path, kv_cache_dtype="int8", kv_cache_memory=2**30)``.
        """
        path = Path(path)
        # a KV dtype this process cannot store is refused before the weights are read
        resolve_kv_cache_dtype(str(engine_kw.get("kv_cache_dtype", "auto")), torch.float32)
        target = device or ("cuda" if torch.cuda.is_available() else "cpu")

        def build() -> Engine:
            model, _ = load_causal_lm(path, dtype=dtype, device=target)
            if target == "cpu":  # the engine's own copy: its projections take oneDNN's prepacked weights
                pack_linears(model, batch_hint=max_batch_size)
            tokenizer = load_tokenizer(path)
            return cls(model, tokenizer, max_batch_size=max_batch_size, name=name or path.name, **engine_kw)

        return in_passing_thread(build)

    # ------------------------------------------------------------------------------ prompts
    def encode(self, prompt: str) -> list[int]:
        return encode_text(self.tokenizer, prompt)

    def render_chat(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
    ) -> list[int]:
        return render_chat(self.tokenizer, self.name, messages, tools)

    # ------------------------------------------------------------------------------ lifecycle
    def start(self) -> Engine:
        self.loop.start(name=f"engine-{self.name}")
        return self

    def stop_accepting(self) -> None:
        self.bridge.accepting = False

    async def drain(self, limit_s: float | None = None) -> bool:
        """Stop taking requests and wait until the ones in flight finish. True when drained."""
        return await self.bridge.drain(limit_s)

    def close(self) -> None:
        """Stop the thread (cancelling what is left) and drop the weights."""
        self.bridge.accepting = False
        self.loop.stop()
        self.model = None

    # ------------------------------------------------------------------------------ state
    @property
    def eos_ids(self) -> set[int]:
        """Token ids that end a sequence (settable: an empty set runs every request to its limit)."""
        return self.output.eos_ids

    @eos_ids.setter
    def eos_ids(self, ids: set[int]) -> None:
        self.output.eos_ids = ids

    @property
    def in_flight(self) -> int:
        return self.bridge.in_flight

    @property
    def vocab_size(self) -> int:
        """Token ids the model has an embedding for (a prompt's ids must be below)."""
        return self.guides.vocab_size

    @property
    def accepting(self) -> bool:
        return self.bridge.accepting

    @property
    def finished(self) -> collections.Counter[str]:
        """How many requests ended for each finish reason."""
        return self.bridge.finished

    @property
    def steps(self) -> int:
        return self.loop.steps

    @property
    def preemptions(self) -> int:
        return self.loop.scheduler.preemptions

    def load_info(self) -> dict[str, int]:
        """What a router needs: requests in flight, running, waiting, and free KV blocks."""
        scheduler = self.loop.scheduler
        # A finished sequence stays in the running list until the engine thread ends its step: its caller
        # may already have its last delta (a warm-up just returned), so it no longer counts.
        running = sum(not seq.finished for seq in list(scheduler.running))
        return {
            "in_flight": self.bridge.in_flight,
            "running": running,
            "waiting": len(scheduler.waiting) + self.bridge.queued,
            "free_blocks": self.allocator.free_blocks,
            "total_blocks": self.allocator.num_blocks,
            "prefix_hit_tokens": self.allocator.prefix_hits,
        }

    def kv_info(self) -> dict[str, int | str]:
        """The KV cache's storage: dtype, tokens it holds, bytes per block and in all (the paged blocks;
        ``row_cache_bytes``: the CPU layout's per-sequence rows, in the same dtype, now)."""
        cache, rows = self.runner.cache, self.runner.rows
        return {
            "kv_dtype": cache.spec.label,
            "capacity_tokens": self.allocator.num_blocks * self.allocator.block_size,
            "block_bytes": cache.block_bytes,
            "kv_cache_bytes": cache.nbytes,
            "row_cache_bytes": rows.nbytes if rows is not None else 0,
        }

    # ------------------------------------------------------------------------------ requests
    def submit(
        self, prompt_ids: list[int], params: SamplingParams, sink: Sink, request_id: str | None = None
    ) -> Request:
        """Validate and queue a request; ``sink`` gets its deltas on the engine thread."""
        params.validate()
        check_prompt_ids(prompt_ids, vocab_size=self.guides.vocab_size)
        params.check_token_ids(self.guides.vocab_size)
        check_context(len(prompt_ids), params, self.max_positions)
        guide = self.guides.guide(params.json_schema) if params.json_schema is not None else None
        capacity = self.allocator.num_blocks * self.allocator.block_size
        if len(prompt_ids) + 1 > capacity:
            raise InvalidRequest(f"prompt has {len(prompt_ids)} tokens; the KV cache holds {capacity}")
        request = Request(list(prompt_ids), params, sink, guide=guide)
        if request_id:
            request.request_id = request_id
        return self.bridge.put(request)

    def stream(
        self, prompt_ids: list[int], params: SamplingParams, request_id: str | None = None
    ) -> AsyncIterator[Delta]:
        """Yield the deltas of one request; closing the iterator (client gone) cancels the request."""
        return self.bridge.stream(lambda sink: self.submit(prompt_ids, params, sink, request_id))

    async def generate(self, prompt_ids: list[int], params: SamplingParams) -> Completion:
        return completion_of([d async for d in self.stream(prompt_ids, params)])

    def generate_sync(
        self, prompt_ids: list[int], params: SamplingParams, timeout: float = 120
    ) -> Completion:
        """Blocking generation from a thread without an event loop (warm-up, scripts)."""
        return completion_of(self.bridge.wait(lambda sink: self.submit(prompt_ids, params, sink), timeout))
