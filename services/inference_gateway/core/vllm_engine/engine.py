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
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from vllm import SamplingParams as VllmSamplingParams
from vllm.exceptions import VLLMClientError
from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams
from vllm.usage.usage_lib import UsageContext
from vllm.v1.engine.async_llm import AsyncLLM
from vllm.v1.engine.exceptions import EngineDeadError

from services.inference_gateway.core.engine.bridge import Sink
from services.inference_gateway.core.engine.output import Completion, Delta, completion_of
from services.inference_gateway.core.engine.sequence import Request
from services.inference_gateway.core.prompts import check_prompt_ids, encode_text, render_chat
from services.inference_gateway.core.sampling import InvalidRequest, SamplingParams, check_context
from services.inference_gateway.core.vllm_engine.crossing import LoopThread, VllmBridge, VllmRequest
from services.inference_gateway.core.vllm_engine.engine_config import engine_config, kv_cache_bytes
from services.inference_gateway.core.vllm_engine.outputs import DeltaMaker
from services.inference_gateway.core.vllm_engine.params import vllm_sampling_kwargs
from services.inference_gateway.core.vllm_engine.stats import Load, LoadLogger

log = logging.getLogger(__name__)


class VllmEngine:
    """One model served by vLLM, with the methods and state puyu's ``Engine`` offers the pool."""

    def __init__(self, llm: AsyncLLM, loop: LoopThread, load: Load, name: str) -> None:
        self.llm, self._loop, self._load, self.name = llm, loop, load, name
        self.tokenizer = llm.get_tokenizer()
        self.max_positions = int(llm.model_config.max_model_len)
        self.vocab_size = int(llm.model_config.get_vocab_size())
        self.total_blocks = int(llm.vllm_config.cache_config.num_gpu_blocks or 0)
        self.bridge = VllmBridge(name, self._dispatch)

    @classmethod
    def load(cls, path: Path | str, *, name: str | None = None, **settings: Any) -> VllmEngine:
        """Start vLLM on a Hugging Face model folder; ``settings``: puyu's engine settings and
        ``vllm_args`` (``engine_config``)."""
        path = Path(path)
        name = name or path.name
        config = engine_config(path, name, **settings)
        load = Load()
        loop = LoopThread(f"vllm-{name}")

        async def make() -> AsyncLLM:  # on its loop, so that its output handler runs there
            return AsyncLLM.from_vllm_config(
                config,
                usage_context=UsageContext.ENGINE_CONTEXT,
                stat_loggers=[lambda c, i: LoadLogger(load)],
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
            "block_bytes": kv_cache_bytes(self.llm.vllm_config, int(cache.block_size)),
            "kv_cache_bytes": kv_cache_bytes(self.llm.vllm_config, capacity),
            "row_cache_bytes": 0,
        }

    # ------------------------------------------------------------------------------ requests
    def submit(
        self, prompt_ids: list[int], params: SamplingParams, sink: Sink, request_id: str | None = None
    ) -> VllmRequest:
        """Validate (as puyu's engine does, before any compute) and hand the request to vLLM."""
        params.validate()
        check_prompt_ids(prompt_ids, vocab_size=self.vocab_size)
        params.check_token_ids(self.vocab_size)
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
        request = VllmRequest(list(prompt_ids), params, sink, vllm_params=vllm_params)
        if request_id:
            request.request_id = request_id
        self.bridge.put(request)
        return request

    def _dispatch(self, request: Request) -> None:
        assert isinstance(request, VllmRequest)
        request.future = self._loop.submit(self._run(request))

    async def _run(self, request: VllmRequest) -> None:
        """Generate on vLLM's loop, sending the request's deltas to its sink; always ends it."""
        maker = DeltaMaker(request.params, request.prompt_ids, self.tokenizer)
        reason = "error"
        try:
            # the token ids rendered into an engine input, as vLLM asks (raw prompts are deprecated)
            (prompt,) = await self.llm.renderer.render_cmpl_async([{"prompt_token_ids": request.prompt_ids}])
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

    async def stream(
        self, prompt_ids: list[int], params: SamplingParams, request_id: str | None = None
    ) -> AsyncIterator[Delta]:
        """Yield the deltas of one request; closing the iterator (client gone) cancels the request.

        A request vLLM refuses before generating raises InvalidRequest with its reason."""
        submitted: list[VllmRequest] = []

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
