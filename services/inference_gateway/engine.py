"""The inference engine: one Hugging Face causal LM served by a background thread with iteration-level batching.

Scheduling: requests wait in a queue; at every iteration the engine thread admits waiting requests
(up to ``max_batch_size``), prefills each one alone (exact, no padding), then merges its KV cache into
the running batch cache, left-padding the shorter side (padding is masked out and each row carries
its own position ids, so RoPE sees the same positions as an unpadded run). One forward pass then
decodes one token for every running request; finished or cancelled rows are dropped from the cache
at once, and the left padding no row needs any more is trimmed. A request therefore joins and leaves
the batch between any two decode steps (continuous batching) instead of waiting for a whole wave.

The KV cache is transformers' ``DynamicCache`` (contiguous tensors); a paged cache replaces it later.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

from services.inference_gateway.sampling import (
    InvalidRequest,
    SamplingParams,
    StopChecker,
    make_generator,
    sample_next,
)

log = logging.getLogger(__name__)


class EngineClosed(RuntimeError):
    """The engine stopped accepting requests (it is draining or closed)."""


@dataclass(frozen=True)
class Delta:
    """A piece of a request's output: new text; the last one has ``finish_reason`` set."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None = None  # stop | length | cancelled | error
    error: str | None = None


@dataclass
class Completion:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


_ids = itertools.count()


@dataclass
class Request:
    prompt_ids: list[int]
    params: SamplingParams
    sink: Callable[[Delta], None]  # called from the engine thread
    request_id: str = field(default_factory=lambda: f"req-{next(_ids)}")
    cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        self.cancelled.set()


@dataclass
class _Seq:
    """A running request: its generated tokens, next position and stop-string state."""

    req: Request
    gen: torch.Generator
    stop: StopChecker
    generated: list[int] = field(default_factory=list)
    position: int = 0
    done: bool = False


class Engine:
    def __init__(self, model: Any, tokenizer: Any, *, max_batch_size: int = 16, name: str = "model") -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.max_batch_size = max_batch_size
        self.max_positions = int(getattr(model.config, "max_position_embeddings", 0) or 1 << 30)
        eos = getattr(model.generation_config, "eos_token_id", None) or tokenizer.eos_token_id
        self.eos_ids: set[int] = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        self._queue: queue.Queue[Request | None] = queue.Queue()
        self._accepting = True
        self._in_flight = 0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._idle = threading.Event()
        self._idle.set()
        self.finished: collections.Counter[str] = collections.Counter()  # finish reasons, for metrics/tests

    # ------------------------------------------------------------------------------ construction
    @classmethod
    def load(
        cls,
        path: Path | str,
        *,
        max_batch_size: int = 16,
        name: str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Engine:
        """Load a Hugging Face model folder (weights + tokenizer) on the CPU."""
        path = Path(path)
        if not (path / "config.json").exists():
            raise InvalidRequest(f"{path} is not a Hugging Face model folder (no config.json)")
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        return cls(model, tokenizer, max_batch_size=max_batch_size, name=name or path.name)

    # ------------------------------------------------------------------------------ prompts
    def encode(self, prompt: str) -> list[int]:
        return list(self.tokenizer(prompt)["input_ids"])

    def render_chat(self, messages: list[dict[str, Any]]) -> list[int]:
        if not getattr(self.tokenizer, "chat_template", None):
            raise InvalidRequest(f"model {self.name!r} has no chat template: use /v1/completions")
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    # ------------------------------------------------------------------------------ lifecycle
    def start(self) -> Engine:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"engine-{self.name}", daemon=True)
            self._thread.start()
        return self

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def accepting(self) -> bool:
        return self._accepting

    def stop_accepting(self) -> None:
        self._accepting = False

    async def drain(self, limit_s: float | None = None) -> bool:
        """Stop taking requests and wait until the ones in flight finish. True when drained."""
        self.stop_accepting()
        deadline = None if limit_s is None else time.monotonic() + limit_s
        while self._in_flight:
            if deadline is not None and time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    def close(self) -> None:
        """Stop the thread (cancelling what is left) and drop the weights."""
        self._accepting = False
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=30)
            self._thread = None
        self.model = None

    # ------------------------------------------------------------------------------ requests
    def submit(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        sink: Callable[[Delta], None],
        request_id: str | None = None,
    ) -> Request:
        params.validate()
        if not prompt_ids:
            raise InvalidRequest("the prompt is empty")
        if len(prompt_ids) + 1 > self.max_positions:
            raise InvalidRequest(
                f"prompt has {len(prompt_ids)} tokens; model {self.name!r} takes at most {self.max_positions - 1}"
            )
        with self._lock:
            if not self._accepting:
                raise EngineClosed(f"engine {self.name!r} is not accepting requests")
            self._in_flight += 1
            self._idle.clear()
        req = Request(prompt_ids, params, sink)
        if request_id:
            req.request_id = request_id
        self._queue.put(req)
        return req

    async def stream(
        self, prompt_ids: list[int], params: SamplingParams, request_id: str | None = None
    ) -> AsyncIterator[Delta]:
        """Yield the deltas of one request; closing the iterator (client gone) cancels the request."""
        loop = asyncio.get_running_loop()
        q: asyncio.Queue[Delta] = asyncio.Queue()

        def sink(d: Delta) -> None:
            loop.call_soon_threadsafe(q.put_nowait, d)

        req = self.submit(prompt_ids, params, sink, request_id)
        finished = False
        try:
            while True:
                delta = await q.get()
                finished = delta.finish_reason is not None
                yield delta
                if finished:
                    return
        finally:
            if not finished:
                req.cancel()

    async def generate(self, prompt_ids: list[int], params: SamplingParams) -> Completion:
        parts: list[str] = []
        last: Delta | None = None
        async for delta in self.stream(prompt_ids, params):
            parts.append(delta.text)
            last = delta
        assert last is not None and last.finish_reason is not None
        if last.finish_reason == "error":
            raise RuntimeError(last.error or "generation failed")
        return Completion("".join(parts), last.finish_reason, last.prompt_tokens, last.completion_tokens)

    def generate_sync(
        self, prompt_ids: list[int], params: SamplingParams, timeout: float = 120
    ) -> Completion:
        """Blocking generation from a thread without an event loop (warm-up, scripts)."""
        done = threading.Event()
        parts: list[str] = []
        last: list[Delta] = []

        def sink(d: Delta) -> None:
            parts.append(d.text)
            if d.finish_reason is not None:
                last.append(d)
                done.set()

        self.submit(prompt_ids, params, sink)
        if not done.wait(timeout):
            raise TimeoutError(f"engine {self.name!r} did not answer within {timeout}s")
        if last[0].finish_reason == "error":
            raise RuntimeError(last[0].error or "generation failed")
        return Completion(
            "".join(parts), last[0].finish_reason or "", last[0].prompt_tokens, last[0].completion_tokens
        )

    # ------------------------------------------------------------------------------ the loop
    def _run(self) -> None:
        with torch.inference_mode():
            batch = _Batch()
            while True:
                block = not batch.seqs
                stopping = self._admit(batch, block)
                if stopping:
                    for seq in batch.seqs:
                        self._finish(seq, "cancelled")
                    return
                if batch.seqs:
                    try:
                        self._decode(batch)
                    except Exception as exc:  # a broken step fails its requests, never the thread
                        log.exception("decode step failed")
                        for seq in batch.seqs:
                            self._finish(seq, "error", f"{type(exc).__name__}: {exc}")
                        batch.reset()
                    batch.drop_done()

    def _admit(self, batch: _Batch, block: bool) -> bool:
        """Move waiting requests into the batch; True when the engine is closing."""
        while len(batch.seqs) < self.max_batch_size:
            try:
                req = self._queue.get(block=block, timeout=None if block else 0)
            except queue.Empty:
                return False
            block = False
            if req is None:
                return True
            seq = _Seq(
                req,
                make_generator(req.params.seed),
                StopChecker(req.params.stop),
                position=len(req.prompt_ids),
            )
            if req.cancelled.is_set():
                self._finish(seq, "cancelled")
                continue
            try:
                self._prefill(batch, seq)
            except Exception as exc:
                log.exception("prefill failed")
                self._finish(seq, "error", f"{type(exc).__name__}: {exc}")
        return False

    def _prefill(self, batch: _Batch, seq: _Seq) -> None:
        ids = torch.tensor([seq.req.prompt_ids], dtype=torch.long)
        cache = DynamicCache(config=self.model.config)
        # the cache is filled in place (transformers 5 names the argument ``cache``)
        out = self.model(input_ids=ids, cache=cache, use_cache=True)
        self._advance(seq, out.logits[0, -1])
        if not seq.done:
            batch.add(seq, cache, len(seq.req.prompt_ids))

    def _decode(self, batch: _Batch) -> None:
        for seq in batch.seqs:
            if seq.req.cancelled.is_set():
                self._finish(seq, "cancelled")
        batch.drop_done()
        if not batch.seqs:
            return
        input_ids = torch.tensor([[s.generated[-1]] for s in batch.seqs], dtype=torch.long)
        positions = torch.tensor([[s.position - 1] for s in batch.seqs], dtype=torch.long)
        batch.mask = torch.cat([batch.mask, torch.ones(len(batch.seqs), 1, dtype=torch.long)], dim=1)
        out = self.model(
            input_ids=input_ids,
            attention_mask=batch.mask,
            position_ids=positions,
            cache=batch.cache,
            use_cache=True,
        )
        for i, seq in enumerate(batch.seqs):
            self._advance(seq, out.logits[i, -1])

    def _advance(self, seq: _Seq, logits: torch.Tensor) -> None:
        """Sample one token for ``seq``, emit the text that is safe to emit, finish it if it is done."""
        token = sample_next(logits, seq.req.params, seq.gen)
        if token in self.eos_ids:
            self._finish(seq, "stop")
            return
        seq.generated.append(token)
        seq.position += 1
        text = self.tokenizer.decode(seq.generated, skip_special_tokens=True)
        stop_at = seq.stop.find_stop(text) if seq.req.params.stop else None
        if stop_at is not None:
            self._finish(seq, "stop", text=text[:stop_at])
        elif len(seq.generated) >= seq.req.params.max_tokens or seq.position >= self.max_positions:
            self._finish(seq, "length", text=text)
        else:
            piece = seq.stop.delta(text, seq.stop.safe_end(text))
            if piece:
                seq.req.sink(Delta(piece, len(seq.req.prompt_ids), len(seq.generated)))

    def _finish(self, seq: _Seq, reason: str, error: str | None = None, text: str | None = None) -> None:
        if seq.done:
            return
        seq.done = True
        if text is None:
            text = self.tokenizer.decode(seq.generated, skip_special_tokens=True) if seq.generated else ""
        piece = seq.stop.delta(text, len(text)) if reason in ("stop", "length") else ""
        with self._lock:  # before the sink, so a caller that saw the last delta sees the count drop
            self._in_flight -= 1
            self.finished[reason] += 1
            if not self._in_flight:
                self._idle.set()
        try:
            seq.req.sink(Delta(piece, len(seq.req.prompt_ids), len(seq.generated), reason, error))
        except Exception:  # a sink whose loop is gone must not take the engine down
            log.debug("sink failed", exc_info=True)


class _Batch:
    """The running rows: their sequences, one rectangular KV cache and the matching attention mask."""

    def __init__(self) -> None:
        self.seqs: list[_Seq] = []
        self.cache: Any = None
        self.mask = torch.zeros(0, 0, dtype=torch.long)

    def reset(self) -> None:
        self.seqs, self.cache = [], None
        self.mask = torch.zeros(0, 0, dtype=torch.long)

    def add(self, seq: _Seq, cache: Any, length: int) -> None:
        row_mask = torch.ones(1, length, dtype=torch.long)
        if not self.seqs:
            self.seqs, self.cache, self.mask = [seq], cache, row_mask
            return
        width = max(self.mask.shape[1], length)
        self.mask = torch.cat([_pad_left(self.mask, width), _pad_left(row_mask, width)], dim=0)
        for mine, theirs in zip(self.cache.layers, cache.layers, strict=True):
            mine.keys = torch.cat([_pad_left(mine.keys, width, -2), _pad_left(theirs.keys, width, -2)], dim=0)
            mine.values = torch.cat(
                [_pad_left(mine.values, width, -2), _pad_left(theirs.values, width, -2)], dim=0
            )
        self.seqs.append(seq)

    def drop_done(self) -> None:
        keep = [i for i, s in enumerate(self.seqs) if not s.done]
        if len(keep) == len(self.seqs):
            return
        if not keep:
            self.reset()
            return
        idx = torch.tensor(keep, dtype=torch.long)
        self.seqs = [self.seqs[i] for i in keep]
        self.mask = self.mask[idx]
        # columns that are padding in every remaining row are dead weight: trim them
        first = int(self.mask.any(dim=0).long().argmax().item())
        self.mask = self.mask[:, first:]
        for layer in self.cache.layers:
            layer.keys = layer.keys[idx][:, :, first:]
            layer.values = layer.values[idx][:, :, first:]


def _pad_left(t: torch.Tensor, width: int, dim: int = -1) -> torch.Tensor:
    missing = width - t.shape[dim]
    if missing <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)


def close_quietly(engine: Engine) -> None:
    with contextlib.suppress(Exception):
        engine.close()
