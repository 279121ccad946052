"""Per-request state: the submitted ``Request`` and the engine's ``Sequence`` that serves it."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from services.inference_gateway.core.guided import Guide
from services.inference_gateway.core.sampling import SamplingParams, StopChecker, make_generator

if TYPE_CHECKING:
    from services.inference_gateway.core.engine.output import Delta, TokenLogprob

_request_numbers = itertools.count()


@dataclass
class Request:
    """What a caller submitted; ``sink`` receives its deltas on the engine thread."""

    prompt_ids: list[int]
    params: SamplingParams
    sink: Callable[[Delta], None]
    request_id: str = field(default_factory=lambda: f"req-{next(_request_numbers)}")
    cancelled: threading.Event = field(default_factory=threading.Event)
    arrived: float = field(default_factory=time.monotonic)
    guide: Guide | None = None

    def cancel(self) -> None:
        self.cancelled.set()


@dataclass(eq=False)  # identity equality: sequences are looked up in lists every step
class Sequence:
    """A request in the engine: all its tokens, how many have KV in the cache, its blocks, its output state."""

    request: Request
    generator: torch.Generator
    stop_checker: StopChecker
    token_ids: list[int]  # the prompt, then every generated token
    guide: Guide | None = None
    # KV cache state (scheduler)
    block_table: list[int] = field(default_factory=list)
    block_hashes: list[int] = field(default_factory=list)  # chained hashes of its full blocks, registered
    num_computed: int = 0  # tokens whose keys and values are in the cache
    num_cached: int = 0  # prompt tokens served from the prefix cache
    prefix_matched: bool = False  # had its prefix-cache lookup (again after a preemption)
    kv_row: int | None = None  # its row in the runner's row cache while running (CPU layout)
    finished: bool = False
    # output state (output processor)
    pending_logprobs: list[TokenLogprob] = field(default_factory=list)  # since the last delta
    prompt_logprobs: list[TokenLogprob | None] | None = None  # None: not asked for
    sent_first_delta: bool = False
    output_text: str = ""  # detokenized output so far (incremental: only a short window is decoded per step)
    prefix_offset: int = 0  # the decode window over the generated tokens: text up to read_offset is final,
    read_offset: int = 0  # and prefix_offset..read_offset is decoded again as context for what follows

    @classmethod
    def of(cls, request: Request) -> Sequence:
        params = request.params
        seq = cls(
            request,
            make_generator(params.seed),
            StopChecker(params.stop),
            list(request.prompt_ids),
            guide=request.guide,
        )
        if params.prompt_logprobs:
            seq.prompt_logprobs = [None]  # the first prompt token has none
        return seq

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.request.prompt_ids)

    @property
    def num_generated(self) -> int:
        return len(self.token_ids) - len(self.request.prompt_ids)

    @property
    def generated_ids(self) -> list[int]:
        return self.token_ids[len(self.request.prompt_ids) :]
