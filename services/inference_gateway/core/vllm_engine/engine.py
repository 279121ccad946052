"""``VllmEngine``: vLLM's ``AsyncLLM`` behind the interface the pool expects of an engine (``ServingEngine``).

vLLM's engine API is used in this process, no HTTP in between: ``AsyncLLM`` runs the model in its
engine-core process (as every vLLM deployment does), and here, on an event loop of its own in a thread,
its output handler turns the core's outputs into ``RequestOutput``s. Requests cross from the caller
(any event loop, or a plain thread for the warm-up) to that loop and their deltas come back through
puyu's ``RequestBridge``, which also counts the requests in flight, refuses new ones while draining
and answers ``drain``. A request is validated here before vLLM sees it, with the same checks and
words as puyu's engine; the load a router reads (running, waiting, KV blocks) comes from the
scheduler's statistics, which vLLM hands to a stat logger after every step.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import AsyncIterator, Coroutine
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from vllm import AsyncEngineArgs
from vllm import SamplingParams as VllmSamplingParams
from vllm.exceptions import VLLMClientError
from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams
from vllm.usage.usage_lib import UsageContext
from vllm.v1.engine.async_llm import AsyncLLM
from vllm.v1.engine.exceptions import EngineDeadError
from vllm.v1.metrics.loggers import StatLoggerBase

from services.inference_gateway.core.engine.bridge import EngineClosed, RequestBridge, Sink
from services.inference_gateway.core.engine.output import Completion, Delta, completion_of
from services.inference_gateway.core.engine.sequence import Request
from services.inference_gateway.core.prompts import check_prompt_ids, encode_text, render_chat
from services.inference_gateway.core.sampling import InvalidRequest, SamplingParams, check_context
from services.inference_gateway.core.vllm_engine.outputs import DeltaMaker
from services.inference_gateway.core.vllm_engine.params import vllm_sampling_kwargs

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class _Load:
    """The scheduler's last statistics (written on the engine's loop, read from any thread)."""

    running: int = 0
    waiting: int = 0
    kv_usage: float = 0.0
    prefix_hit_tokens: int = 0


class _LoadLogger(StatLoggerBase):
    """vLLM's hook for its statistics after each engine step: keeps what a router needs."""

    def __init__(self, load: _Load) -> None:
        self.load = load

    def record(
        self, scheduler_stats: Any, iteration_stats: Any, mm_cache_stats: Any = None, engine_idx: int = 0
    ) -> None:
        if scheduler_stats is not None:
            self.load.running = scheduler_stats.num_running_reqs
            self.load.waiting = scheduler_stats.num_waiting_reqs + scheduler_stats.num_skipped_waiting_reqs
            self.load.kv_usage = scheduler_stats.kv_cache_usage
            self.load.prefix_hit_tokens += scheduler_stats.prefix_cache_stats.hits

    def log_engine_initialized(self) -> None:
        pass


@dataclass(eq=False)
class _VllmRequest(Request):
    """A request on its way to vLLM: its task on the engine's loop, cancelled with the request."""

    vllm_params: Any = None
    future: Future[None] | None = None
    rejected: str | None = None  # vLLM refused it before generating (its reason)
    done: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        super().cancel()
        if self.future is not None:
            self.future.cancel()  # thread-safe: cancels the task on the engine's loop


class _Bridge(RequestBridge):
    """puyu's bridge, but a request goes to vLLM's loop instead of an engine thread's inbox."""

    def __init__(self, name: str, dispatch: Any) -> None:
        super().__init__(name)
        self._dispatch = dispatch

    def put(self, request: Request) -> Request:
        with self._lock:
            if not self.accepting:
                raise EngineClosed(f"engine {self.name!r} is not accepting requests")
            self.in_flight += 1
        self._dispatch(request)
        return request


class _LoopThread:
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


def _kv_cache_bytes(config: Any, tokens: int) -> int:
    """Bytes of a KV cache holding ``tokens`` tokens of this model (keys and values, every layer)."""
    model = config.model_config
    itemsize = 1 if str(config.cache_config.cache_dtype).startswith("fp8") else model.dtype.itemsize
    per_token = (
        2
        * model.get_num_layers(config.parallel_config)
        * model.get_num_kv_heads(config.parallel_config)
        * model.get_head_size()
        * itemsize
    )
    return tokens * per_token


class VllmEngine:
    """One model served by vLLM, with the methods and state puyu's ``Engine`` offers the pool."""

    def __init__(self, llm: AsyncLLM, loop: _LoopThread, load: _Load, name: str) -> None:
        self.llm, self._loop, self._load, self.name = llm, loop, load, name
        self.tokenizer = llm.get_tokenizer()
        self.max_positions = int(llm.model_config.max_model_len)
        self.vocab_size = int(llm.model_config.get_vocab_size())
        self.total_blocks = int(llm.vllm_config.cache_config.num_gpu_blocks or 0)
        self.bridge = _Bridge(name, self._dispatch)

    @classmethod
    def load(
        cls,
        path: Path | str,
        *,
        name: str | None = None,
        max_batch_size: int = 16,
        block_size: int = 16,
        num_blocks: int | None = None,
        max_step_tokens: int = 256,
        prefix_caching: bool = True,
        dtype: str = "auto",
        kv_cache_dtype: str = "auto",
        kv_cache_memory: int | None = None,
        vllm_args: dict[str, Any] | None = None,
        **ignored: Any,
    ) -> VllmEngine:
        """Start vLLM on a Hugging Face model folder, with puyu's engine settings where vLLM has them.

        ``max_batch_size`` is vLLM's ``max_num_seqs``; ``max_step_tokens`` its ``max_num_batched_tokens``,
        raised to the context (vLLM needs a whole prompt's worth per step); ``prefix_caching`` its own;
        ``kv_cache_dtype`` auto or fp8 (e4m3; vLLM has no int8 KV cache: refused). The KV cache takes
        ``kv_cache_memory`` bytes, or ``num_blocks`` of ``block_size`` tokens, when given; else, on the
        CPU, where vLLM would take most of the memory, room for a full batch at 2048 tokens as puyu's
        engine has (VLLM_CPU_KVCACHE_SPACE goes first); on a GPU, ``gpu_memory_utilization`` 0.45, so
        that two versions fit during a switch. ``vllm_args``: more ``AsyncEngineArgs`` (e.g.
        ``tensor_parallel_size``, ``enforce_eager``), which win over all of the above.
        """
        path = Path(path)
        name = name or path.name
        extra = dict(vllm_args or {})
        unknown = sorted(set(extra) - set(AsyncEngineArgs.__dataclass_fields__))
        if unknown:
            raise InvalidRequest(f"PUYU_WORKER_VLLM_ARGS: not vLLM engine arguments: {', '.join(unknown)}")
        if kv_cache_dtype not in ("auto", "fp8"):
            raise InvalidRequest(f"vLLM has no {kv_cache_dtype} KV cache: use auto or fp8 with vLLM")
        if ignored:
            log.info("vLLM engine %s: puyu engine settings vLLM has no use for: %s", name, sorted(ignored))
        # vLLM's CPU build pins its OpenMP threads to cores unless told not to; a host runs several
        # workers, and a switch two engines in one worker, which would all be pinned to the same cores
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
        os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
        args: dict[str, Any] = {
            "model": str(path),
            "served_model_name": name,
            "dtype": dtype,
            "kv_cache_dtype": kv_cache_dtype,
            "max_num_seqs": max_batch_size,
            "enable_prefix_caching": prefix_caching,
            "disable_log_stats": True,  # its own loggers off; ours (_LoadLogger) still gets the stats
            **({"kv_cache_memory_bytes": int(kv_cache_memory)} if kv_cache_memory is not None else {}),
            **extra,
        }
        config = AsyncEngineArgs(**args).create_engine_config(UsageContext.ENGINE_CONTEXT)
        if "max_num_batched_tokens" not in extra:
            config.scheduler_config.max_num_batched_tokens = max(
                max_step_tokens, config.model_config.max_model_len
            )
        if "structured_outputs_config" not in extra:
            # JSON without free whitespace between tokens, as puyu's guide compiles a schema (else a
            # small model fills max_tokens with blanks); vLLM's separators are "," and ":"
            config.structured_outputs_config.disable_any_whitespace = True
        cache = config.cache_config
        sized = cache.kv_cache_memory_bytes is not None or os.environ.get("VLLM_CPU_KVCACHE_SPACE")
        if not sized and num_blocks is not None:
            cache.kv_cache_memory_bytes = _kv_cache_bytes(config, num_blocks * block_size)
        elif not sized and config.device_config.device_type == "cpu":
            longest = min(config.model_config.max_model_len, 2048)  # as puyu's engine sizes its cache
            tokens = max_batch_size * (longest + block_size)
            cache.kv_cache_memory_bytes = _kv_cache_bytes(config, tokens)
        elif not sized and "gpu_memory_utilization" not in extra:
            cache.gpu_memory_utilization = 0.45
        load = _Load()
        loop = _LoopThread(f"vllm-{name}")

        async def make() -> AsyncLLM:  # on its loop, so that its output handler runs there
            return AsyncLLM.from_vllm_config(
                config,
                usage_context=UsageContext.ENGINE_CONTEXT,
                stat_loggers=[lambda c, i: _LoadLogger(load)],
                disable_log_stats=True,
            )

        try:
            llm = loop.submit(make()).result()
        except BaseException:
            loop.stop()
            raise
        return cls(llm, loop, load, name)

    # ------------------------------------------------------------------------------ prompts
    def encode(self, prompt: str) -> list[int]:
        return encode_text(self.tokenizer, prompt)

    def render_chat(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
    ) -> list[int]:
        return render_chat(self.tokenizer, self.name, messages, tools)

    # ------------------------------------------------------------------------------ lifecycle
    def start(self) -> VllmEngine:
        return self  # vLLM serves from load on

    def stop_accepting(self) -> None:
        self.bridge.accepting = False

    async def drain(self, limit_s: float | None = None) -> bool:
        """Stop taking requests and wait until the ones in flight finish. True when drained."""
        return await self.bridge.drain(limit_s)

    def close(self) -> None:
        """Cancel what still runs, stop vLLM's engine-core process and the loop."""
        self.bridge.accepting = False
        if not self._loop.loop.is_closed():

            async def shutdown() -> None:
                tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                self.llm.shutdown()

            try:
                self._loop.submit(shutdown()).result(60)
            finally:
                self._loop.stop()

    # ------------------------------------------------------------------------------ state
    @property
    def in_flight(self) -> int:
        return self.bridge.in_flight

    @property
    def accepting(self) -> bool:
        return self.bridge.accepting

    def load_info(self) -> dict[str, int]:
        """As puyu's engine reports it; running and waiting from vLLM's scheduler after its last step,
        bounded by the requests actually in flight (the last step's figures stay after it went idle)."""
        in_flight = self.bridge.in_flight
        running = min(self._load.running, in_flight)
        free = round(self.total_blocks * (1 - self._load.kv_usage))
        return {
            "in_flight": in_flight,
            "running": running,
            "waiting": in_flight - running,
            "free_blocks": free,
            "total_blocks": self.total_blocks,
            "prefix_hit_tokens": self._load.prefix_hit_tokens,
        }

    def kv_info(self) -> dict[str, int | str]:
        """The KV cache's storage as puyu's engine reports it (vLLM's blocks, its dtype)."""
        cache = self.llm.vllm_config.cache_config
        dtype = cache.cache_dtype
        if dtype == "auto":
            dtype = str(self.llm.model_config.dtype).removeprefix("torch.")
        elif dtype == "fp8":
            dtype = "fp8_e4m3"
        capacity = self.total_blocks * int(cache.block_size)
        return {
            "kv_dtype": dtype,
            "capacity_tokens": capacity,
            "block_bytes": _kv_cache_bytes(self.llm.vllm_config, int(cache.block_size)),
            "kv_cache_bytes": _kv_cache_bytes(self.llm.vllm_config, capacity),
            "row_cache_bytes": 0,
        }

    # ------------------------------------------------------------------------------ requests
    def submit(
        self, prompt_ids: list[int], params: SamplingParams, sink: Sink, request_id: str | None = None
    ) -> _VllmRequest:
        """Validate (as puyu's engine does, before any compute) and hand the request to vLLM."""
        params.validate()
        check_prompt_ids(prompt_ids, vocab_size=self.vocab_size)
        check_context(len(prompt_ids), params, self.max_positions)
        kwargs = vllm_sampling_kwargs(params, len(prompt_ids), self.max_positions)
        schema = kwargs.pop("json_schema", None)
        try:
            vllm_params = VllmSamplingParams(
                **kwargs,
                output_kind=RequestOutputKind.DELTA,
                structured_outputs=StructuredOutputsParams(json=schema) if schema is not None else None,
            )
        except (ValueError, VLLMClientError) as exc:  # vLLM's own bounds, where they are narrower than puyu's
            raise InvalidRequest(f"vLLM refuses the request: {exc}") from None
        request = _VllmRequest(list(prompt_ids), params, sink, vllm_params=vllm_params)
        if request_id:
            request.request_id = request_id
        self.bridge.put(request)
        return request

    def _dispatch(self, request: Request) -> None:
        assert isinstance(request, _VllmRequest)
        request.future = self._loop.submit(self._run(request))

    async def _run(self, request: _VllmRequest) -> None:
        """Generate on vLLM's loop, sending the request's deltas to its sink; always ends it."""
        maker = DeltaMaker(request.params, request.prompt_ids, self.tokenizer)
        reason = "error"
        try:
            prompt = {"prompt_token_ids": request.prompt_ids}
            async for out in self.llm.generate(prompt, request.vllm_params, request.request_id):
                delta = maker.delta(out)
                if delta is not None:
                    request.sink(delta)
                    reason = delta.finish_reason or reason
                if out.finished:
                    return
            reason = "cancelled"  # the stream ended without a last output: aborted inside vLLM
            request.sink(Delta("", len(request.prompt_ids), maker.completion_tokens, reason))
        except asyncio.CancelledError:  # the caller went away (vLLM aborts the request)
            reason = "cancelled"
            request.sink(Delta("", len(request.prompt_ids), maker.completion_tokens, reason))
        except EngineDeadError as exc:
            self.bridge.accepting = False  # a router moves new requests elsewhere
            log.error("vLLM engine %s died: %s", self.name, exc)
            request.sink(Delta("", 0, 0, "error", error=f"the vLLM engine died: {exc}"))
        except Exception as exc:
            if not maker.sent_first and isinstance(exc, ValueError | VLLMClientError):  # refused up front
                request.rejected = str(exc)
            request.sink(Delta("", 0, 0, "error", error=f"{type(exc).__name__}: {exc}"))
        finally:
            self.bridge.finished_one(reason)
            request.done.set()

    async def stream(
        self, prompt_ids: list[int], params: SamplingParams, request_id: str | None = None
    ) -> AsyncIterator[Delta]:
        """Yield the deltas of one request; closing the iterator (client gone) cancels the request.

        A request vLLM refuses before generating raises InvalidRequest with its reason."""
        submitted: list[_VllmRequest] = []

        def submit(sink: Sink) -> Request:
            submitted.append(self.submit(prompt_ids, params, sink, request_id))
            return submitted[0]

        async for delta in self.bridge.stream(submit):
            if delta.finish_reason == "error" and submitted[0].rejected is not None:
                raise InvalidRequest(submitted[0].rejected)
            yield delta

    async def generate(self, prompt_ids: list[int], params: SamplingParams) -> Completion:
        return completion_of([d async for d in self.stream(prompt_ids, params)])

    def generate_sync(
        self, prompt_ids: list[int], params: SamplingParams, timeout: float = 120
    ) -> Completion:
        """Blocking generation from a thread without an event loop (warm-up, scripts)."""
        return completion_of(self.bridge.wait(lambda sink: self.submit(prompt_ids, params, sink), timeout))
