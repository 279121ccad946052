"""The inference engine: one Llama-family model served by a background thread with continuous batching.

Scheduling is iteration-level over a paged KV cache (``kv_cache``, ``runner``): at every step the
running sequences each decode one token, and the rest of the step's token budget goes to prompt
chunks of sequences still in prefill, then to newly admitted requests (chunked prefill, decode
first, so a long prompt never stalls the streams already running: LMDeploy's "split & fuse").
A new request first takes the cached blocks of its longest cached prompt prefix (prefix caching).
When the cache runs out of blocks the most recently admitted sequence is preempted: its blocks are
freed and it is recomputed later (mostly from the prefix cache). Finished or cancelled sequences
free their blocks at once, so requests join and leave the batch between any two steps.
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
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from services.inference_gateway.core.guided import Guide, GuideFactory
from services.inference_gateway.core.kv_cache import OutOfBlocks, chain_hash
from services.inference_gateway.core.model_runner import Chunk, ModelRunner
from services.inference_gateway.core.sampling import (
    InvalidRequest,
    SamplingParams,
    StopChecker,
    apply_penalties,
    make_generator,
    sample_next,
)

log = logging.getLogger(__name__)


class EngineClosed(RuntimeError):
    """The engine stopped accepting requests (it is draining or closed)."""


@dataclass(frozen=True)
class TokenLogprob:
    token_id: int
    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class Delta:
    """A piece of a request's output: new text; the last one has ``finish_reason`` set."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None = None  # stop | length | cancelled | error
    error: str | None = None
    logprobs: tuple[TokenLogprob, ...] = ()  # of the tokens generated since the previous delta
    prompt_logprobs: tuple[TokenLogprob | None, ...] | None = None  # once, on the first delta
    cached_tokens: int = 0
    prompt_first_token: str | None = None  # with prompt logprobs: the first prompt token (it has none)
    worker: str = ""  # the instance that generated it (set by the router)


@dataclass
class Completion:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    logprobs: list[TokenLogprob] = field(default_factory=list)
    prompt_logprobs: tuple[TokenLogprob | None, ...] | None = None


_ids = itertools.count()


@dataclass
class Request:
    prompt_ids: list[int]
    params: SamplingParams
    sink: Callable[[Delta], None]  # called from the engine thread
    request_id: str = field(default_factory=lambda: f"req-{next(_ids)}")
    cancelled: threading.Event = field(default_factory=threading.Event)
    arrived: float = field(default_factory=time.monotonic)
    guide: Guide | None = None

    def cancel(self) -> None:
        self.cancelled.set()


@dataclass(eq=False)  # identity equality: sequences are looked up in lists every step
class _Seq:
    """A request in the engine: all its tokens, how many have KV in the cache, its blocks, its output state."""

    req: Request
    gen: torch.Generator
    stop: StopChecker
    tokens: list[int]
    table: list[int] = field(default_factory=list)
    hashes: list[int] = field(default_factory=list)
    computed: int = 0
    cached: int = 0
    started: bool = False  # had its prefix-cache lookup (again after a preemption)
    done: bool = False
    pending_lp: list[TokenLogprob] = field(default_factory=list)
    prompt_lp: list[TokenLogprob | None] | None = None
    sent_first: bool = False
    guide: Guide | None = None
    row: int | None = None  # its row in the runner's row cache while running (CPU layout)
    text: str = ""  # detokenized output so far (incremental: only a short window is decoded per step)
    po: int = 0  # window start and end in the generated tokens
    ro: int = 0

    @property
    def n_prompt(self) -> int:
        return len(self.req.prompt_ids)

    @property
    def generated(self) -> list[int]:
        return self.tokens[self.n_prompt :]


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
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.max_batch_size = max_batch_size
        self.max_step_tokens = max(max_step_tokens, max_batch_size)
        self.prefix_caching = prefix_caching
        self.max_positions = int(getattr(model.config, "max_position_embeddings", 0) or 1 << 30)
        if num_blocks is None:  # room for a full batch of sequences at the longest useful length
            num_blocks = -(-max_batch_size * min(self.max_positions, 2048) // block_size) + max_batch_size
        device = next(model.parameters()).device
        self.runner = ModelRunner(
            model,
            num_blocks=num_blocks,
            block_size=block_size,
            device=device,
            kv_layout=kv_layout,
            max_rows=max_batch_size,
        )
        self.allocator = self.runner.cache.allocator
        eos = getattr(model.generation_config, "eos_token_id", None) or tokenizer.eos_token_id
        self.eos_ids: set[int] = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        vocab = int(model.get_output_embeddings().weight.shape[0])
        self.guides = GuideFactory(tokenizer, vocab, self.eos_ids)
        self._queue: queue.Queue[Request | None] = queue.Queue()
        self._accepting = True
        self._in_flight = 0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._waiting: collections.deque[_Seq] = collections.deque()
        self._running: list[_Seq] = []
        self.finished: collections.Counter[str] = collections.Counter()  # finish reasons, for metrics/tests
        self.steps = 0
        self.preemptions = 0

    # ------------------------------------------------------------------------------ construction
    @classmethod
    def load(
        cls,
        path: Path | str,
        *,
        max_batch_size: int = 16,
        name: str | None = None,
        dtype: torch.dtype = torch.float32,
        device: str | None = None,
        **engine_kw: Any,
    ) -> Engine:
        """Load a Hugging Face model folder (weights + tokenizer), on CUDA when there is one."""
        path = Path(path)
        if not (path / "config.json").exists():
            raise InvalidRequest(f"{path} is not a Hugging Face model folder (no config.json)")
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        model = model.to(torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu")))  # type: ignore[arg-type]  # transformers types .to oddly
        return cls(model, tokenizer, max_batch_size=max_batch_size, name=name or path.name, **engine_kw)

    # ------------------------------------------------------------------------------ prompts
    def encode(self, prompt: str) -> list[int]:
        return list(self.tokenizer(prompt)["input_ids"])

    def render_chat(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
    ) -> list[int]:
        if not getattr(self.tokenizer, "chat_template", None):
            raise InvalidRequest(f"model {self.name!r} has no chat template: use /v1/completions")
        try:
            text = self.tokenizer.apply_chat_template(
                messages, tools=tools or None, add_generation_prompt=True, tokenize=False
            )
        except Exception as exc:  # a template that rejects these messages (roles, order) says why
            raise InvalidRequest(f"the chat template of {self.name!r} rejected the messages: {exc}") from None
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

    def load_info(self) -> dict[str, int]:
        """What a router needs: requests in flight, running, waiting, and free KV blocks."""
        return {
            "in_flight": self._in_flight,
            "running": len(self._running),
            "waiting": len(self._waiting) + self._queue.qsize(),
            "free_blocks": self.allocator.free_blocks,
            "total_blocks": self.allocator.num_blocks,
            "prefix_hit_tokens": self.allocator.prefix_hits,
        }

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
        guide = self.guides.guide(params.json_schema) if params.json_schema is not None else None
        capacity = self.allocator.num_blocks * self.allocator.block_size
        if len(prompt_ids) + 1 > capacity:
            raise InvalidRequest(f"prompt has {len(prompt_ids)} tokens; the KV cache holds {capacity}")
        with self._lock:
            if not self._accepting:
                raise EngineClosed(f"engine {self.name!r} is not accepting requests")
            self._in_flight += 1
        req = Request(list(prompt_ids), params, sink, guide=guide)
        if request_id:
            req.request_id = request_id
        self._queue.put(req)
        return req

    async def stream(
        self, prompt_ids: list[int], params: SamplingParams, request_id: str | None = None
    ) -> AsyncIterator[Delta]:
        """Yield the deltas of one request; closing the iterator (client gone) cancels the request."""
        q: asyncio.Queue[Delta] = asyncio.Queue()
        box = _mailbox(asyncio.get_running_loop())

        def sink(d: Delta) -> None:
            box.post(q, d)

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
        return _completion([d async for d in self.stream(prompt_ids, params)])

    def generate_sync(
        self, prompt_ids: list[int], params: SamplingParams, timeout: float = 120
    ) -> Completion:
        """Blocking generation from a thread without an event loop (warm-up, scripts)."""
        done = threading.Event()
        deltas: list[Delta] = []

        def sink(d: Delta) -> None:
            deltas.append(d)
            if d.finish_reason is not None:
                done.set()

        self.submit(prompt_ids, params, sink)
        if not done.wait(timeout):
            raise TimeoutError(f"engine {self.name!r} did not answer within {timeout}s")
        return _completion(deltas)

    # ------------------------------------------------------------------------------ the loop
    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                if self._take_new(block=not (self._running or self._waiting)):
                    for seq in [*self._running, *self._waiting]:
                        self._finish(seq, "cancelled")
                    return
                try:
                    self._step()
                except Exception as exc:  # a broken step fails its requests, never the thread
                    log.exception("engine step failed")
                    for seq in [*self._running]:
                        self._finish(seq, "error", f"{type(exc).__name__}: {exc}")
                self._running = [s for s in self._running if not s.done]

    def _take_new(self, block: bool) -> bool:
        """Move submitted requests to the waiting queue; True when the engine is closing."""
        while True:
            try:
                req = self._queue.get(block=block)
            except queue.Empty:
                return False
            block = False
            if req is None:
                return True
            seq = _Seq(
                req, make_generator(req.params.seed), StopChecker(req.params.stop), list(req.prompt_ids)
            )
            seq.guide = req.guide
            if req.params.prompt_logprobs:
                seq.prompt_lp = [None]
            self._waiting.append(seq)

    def _ensure_blocks(self, seq: _Seq, end: int) -> None:
        need = -(-end // self.allocator.block_size) - len(seq.table)
        for _ in range(need):
            seq.table.append(self.allocator.allocate())

    def _release(self, seq: _Seq) -> None:
        self.allocator.free(seq.table)
        if seq.row is not None and self.runner.rows is not None:
            self.runner.rows.release(seq.row)
            seq.row = None
        seq.table, seq.hashes, seq.computed, seq.started = [], [], 0, False
        if seq.prompt_lp is not None and not seq.sent_first:  # recomputed from the start
            seq.prompt_lp = [None]

    def _preempt_for(self, seq: _Seq) -> bool:
        """Free the blocks of the latest admitted other running sequence; False when there is none."""
        for victim in reversed(self._running):
            if victim is not seq and not victim.done and victim.table:
                self._release(victim)
                self._running.remove(victim)
                self._waiting.appendleft(victim)
                self.preemptions += 1
                return True
        return False

    def _schedule(self) -> list[tuple[_Seq, Chunk]]:
        budget = self.max_step_tokens
        plan: list[tuple[_Seq, Chunk]] = []
        for seq in list(self._running):
            if seq.done or seq not in self._running:
                continue
            take = min(len(seq.tokens) - seq.computed, budget)
            if take <= 0:
                continue
            while True:
                try:
                    self._ensure_blocks(seq, seq.computed + take)
                    break
                except OutOfBlocks:
                    if not self._preempt_for(seq):
                        self._finish(seq, "length")  # alone and out of cache: it cannot grow
                        break
            if not seq.done:
                plan.append((seq, self._chunk(seq, take)))
                budget -= take
        plan = [(s, c) for s, c in plan if s in self._running and not s.done]
        budget = self.max_step_tokens - sum(len(c.tokens) for _, c in plan)
        while budget > 0 and self._waiting and len(self._running) < self.max_batch_size:
            seq = self._waiting[0]
            if seq.req.cancelled.is_set():
                self._waiting.popleft()
                self._finish(seq, "cancelled")
                continue
            if not seq.started:
                seq.started = True
                if self.prefix_caching and (seq.prompt_lp is None or seq.sent_first):
                    # at least one token is computed, for its logits
                    seq.table, seq.hashes = self.allocator.match_prefix(seq.tokens, len(seq.tokens) - 1)
                    seq.computed = seq.cached = len(seq.table) * self.allocator.block_size
            take = min(len(seq.tokens) - seq.computed, budget)
            try:
                self._ensure_blocks(seq, seq.computed + take)
            except OutOfBlocks:
                if self._running:
                    break  # wait for running sequences to free blocks
                self._waiting.popleft()
                self._release(seq)
                self._finish(seq, "error", "the request does not fit in the KV cache")
                continue
            self._waiting.popleft()
            if self.runner.rows is not None:
                seq.row = self.runner.rows.acquire()
            self._running.append(seq)
            plan.append((seq, self._chunk(seq, take)))
            budget -= take
        return plan

    def _chunk(self, seq: _Seq, take: int) -> Chunk:
        end = seq.computed + take
        if seq.prompt_lp is not None and not seq.sent_first and seq.computed < seq.n_prompt:
            logits = "all"
        else:
            logits = "last" if end == len(seq.tokens) else "none"
        return Chunk(seq.tokens[seq.computed : end], seq.computed, seq.table, logits, seq.row)

    def _step(self) -> None:
        for seq in [*self._running]:
            if seq.req.cancelled.is_set():
                self._finish(seq, "cancelled")
        self._running = [s for s in self._running if not s.done]
        plan = self._schedule()
        if not plan:
            return
        outs = self.runner.forward([c for _, c in plan])
        self.steps += 1
        bs = self.allocator.block_size
        ready: list[tuple[_Seq, torch.Tensor]] = []
        for (seq, chunk), logits in zip(plan, outs, strict=True):
            seq.computed += len(chunk.tokens)
            while (len(seq.hashes) + 1) * bs <= seq.computed:  # register full blocks for prefix reuse
                i = len(seq.hashes)
                h = chain_hash(seq.hashes[-1] if seq.hashes else None, seq.tokens[i * bs : (i + 1) * bs])
                self.allocator.register(seq.table[i], h)
                seq.hashes.append(h)
            if logits is None:
                continue
            if chunk.logits == "all":
                assert seq.prompt_lp is not None
                self._prompt_logprobs(seq, chunk, logits)
                logits = logits[-1]
            if seq.computed == len(seq.tokens):
                ready.append((seq, logits))
        # plain greedy rows take one argmax together; the rest sample one by one
        fast = [
            i
            for i, (s, _) in enumerate(ready)
            if s.req.params.greedy and not s.req.params.penalised and s.guide is None
        ]
        chosen: dict[int, int] = {}
        if fast:
            picks = torch.stack([ready[i][1] for i in fast]).argmax(-1).tolist()
            chosen = dict(zip(fast, picks, strict=True))
        for i, (seq, logits) in enumerate(ready):
            self._advance(seq, logits, chosen.get(i))

    def _prompt_logprobs(self, seq: _Seq, chunk: Chunk, logits: torch.Tensor) -> None:
        assert seq.prompt_lp is not None
        lps = torch.log_softmax(logits, dim=-1)
        for i in range(len(chunk.tokens)):
            nxt = chunk.start + i + 1
            if nxt < seq.n_prompt:
                seq.prompt_lp.append(self._logprob(lps[i], seq.tokens[nxt], seq.req.params.logprobs or 0))

    def _logprob(self, lps: torch.Tensor, token: int, top: int) -> TokenLogprob:
        alts: tuple[tuple[str, float], ...] = ()
        if top:
            vals, idx = torch.topk(lps, min(top, lps.numel()))
            alts = tuple(
                (self.tokenizer.decode([int(t)]), float(v))
                for v, t in zip(vals.tolist(), idx.tolist(), strict=True)
            )
        return TokenLogprob(token, self.tokenizer.decode([token]), float(lps[token]), alts)

    def _detokenize(self, seq: _Seq, flush: bool = False) -> str:
        """The output text, decoding only the tokens since the last complete character (as vLLM does)."""
        gen = seq.generated
        prefix = self.tokenizer.decode(gen[seq.po : seq.ro], skip_special_tokens=True)
        full = self.tokenizer.decode(gen[seq.po :], skip_special_tokens=True)
        if len(full) > len(prefix) and (flush or not full.endswith("\ufffd")):
            seq.text += full[len(prefix) :]
            seq.po, seq.ro = seq.ro, len(gen)
        return seq.text

    def _advance(self, seq: _Seq, logits: torch.Tensor, token: int | None = None) -> None:
        """Sample one token for ``seq``, emit the text that is safe to emit, finish it if it is done."""
        p = seq.req.params
        if token is None:
            scores = apply_penalties(logits, p, seq.req.prompt_ids, seq.generated)
            if seq.guide is not None:
                scores = seq.guide.mask(scores)
            token = sample_next(scores, p, seq.gen)
            if seq.guide is not None:
                seq.guide.accept(token)
        if p.logprobs is not None:
            seq.pending_lp.append(self._logprob(torch.log_softmax(logits, dim=-1), token, p.logprobs))
        if token in self.eos_ids:
            self._finish(seq, "stop")
            return
        seq.tokens.append(token)
        text = self._detokenize(seq)
        if seq.guide is not None and seq.guide.done:  # the JSON is complete
            self._finish(seq, "stop", text=self._detokenize(seq, flush=True))
            return
        stop_at = seq.stop.find_stop(text) if p.stop else None
        if stop_at is not None:
            self._finish(seq, "stop", text=text[:stop_at])
        elif len(seq.generated) >= p.max_tokens or len(seq.tokens) >= self.max_positions:
            self._finish(seq, "length", text=self._detokenize(seq, flush=True))
        else:
            piece = seq.stop.delta(text, seq.stop.safe_end(text))
            if piece or not seq.sent_first:
                self._emit(seq, Delta(piece, seq.n_prompt, len(seq.generated)))

    def _emit(self, seq: _Seq, delta: Delta) -> None:
        extra: dict[str, Any] = {"logprobs": tuple(seq.pending_lp), "cached_tokens": seq.cached}
        seq.pending_lp = []
        if not seq.sent_first and seq.prompt_lp is not None:
            extra["prompt_logprobs"] = tuple(seq.prompt_lp)
            extra["prompt_first_token"] = self.tokenizer.decode(seq.req.prompt_ids[:1])
        seq.sent_first = True
        seq.req.sink(Delta(**{**delta.__dict__, **extra}))

    def _finish(self, seq: _Seq, reason: str, error: str | None = None, text: str | None = None) -> None:
        if seq.done:
            return
        seq.done = True
        if seq.table or seq.row is not None:
            self._release(seq)
        if text is None:
            text = self._detokenize(seq, flush=True) if seq.generated else ""
        piece = seq.stop.delta(text, len(text)) if reason in ("stop", "length") else ""
        with self._lock:  # before the sink, so a caller that saw the last delta sees the count drop
            self._in_flight -= 1
            self.finished[reason] += 1
        try:
            self._emit(seq, Delta(piece, seq.n_prompt, len(seq.generated), reason, error))
        except Exception:  # a sink whose loop is gone must not take the engine down
            log.debug("sink failed", exc_info=True)


class _Mailbox:
    """Deltas from the engine thread to one event loop, handed over in one wake-up per batch.

    A step emits a delta for every running sequence; waking the loop once per delta
    (``call_soon_threadsafe`` each) costs a self-pipe write and a GIL hand-off apiece.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._items: list[tuple[asyncio.Queue[Delta], Delta]] = []
        self._lock = threading.Lock()
        self._scheduled = False

    def post(self, q: asyncio.Queue[Delta], d: Delta) -> None:
        with self._lock:
            self._items.append((q, d))
            if self._scheduled:
                return
            self._scheduled = True
        self.loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        with self._lock:
            items, self._items, self._scheduled = self._items, [], False
        for q, d in items:
            q.put_nowait(d)


_mailboxes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Mailbox] = weakref.WeakKeyDictionary()


def _mailbox(loop: asyncio.AbstractEventLoop) -> _Mailbox:
    box = _mailboxes.get(loop)
    if box is None:
        box = _mailboxes[loop] = _Mailbox(loop)
    return box


def _completion(deltas: list[Delta]) -> Completion:
    last = deltas[-1]
    assert last.finish_reason is not None
    if last.finish_reason == "error":
        raise RuntimeError(last.error or "generation failed")
    prompt_lp = next((d.prompt_logprobs for d in deltas if d.prompt_logprobs is not None), None)
    return Completion(
        "".join(d.text for d in deltas),
        last.finish_reason,
        last.prompt_tokens,
        last.completion_tokens,
        [lp for d in deltas for lp in d.logprobs],
        prompt_lp,
    )


def close_quietly(engine: Engine) -> None:
    with contextlib.suppress(Exception):
        engine.close()
