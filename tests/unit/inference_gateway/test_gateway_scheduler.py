"""The scheduler alone, over a real block allocator and no model: budgets, admission, preemption, prefix reuse."""

from __future__ import annotations

from services.inference_gateway.core.engine.scheduler import Scheduler
from services.inference_gateway.core.engine.sequence import Request, Sequence
from services.inference_gateway.core.kv_cache import BlockAllocator
from services.inference_gateway.core.sampling import SamplingParams

BLOCK = 4


class Ended:
    """Records the sequences the scheduler ends on its own (cancelled, out of cache)."""

    def __init__(self) -> None:
        self.calls: list[tuple[Sequence, str, str | None]] = []

    def __call__(self, seq: Sequence, reason: str, error: str | None) -> None:
        self.calls.append((seq, reason, error))


def make(
    num_blocks: int, *, step_tokens: int = 64, batch: int = 8, prefix_caching: bool = True
) -> tuple[Scheduler, BlockAllocator, Ended]:
    allocator = BlockAllocator(num_blocks, BLOCK)
    ended = Ended()
    scheduler = Scheduler(
        allocator,
        rows=None,
        max_batch_size=batch,
        max_step_tokens=step_tokens,
        prefix_caching=prefix_caching,
        on_finished=ended,
    )
    return scheduler, allocator, ended


def seq(prompt: list[int], **params: object) -> Sequence:
    return Sequence.of(Request(prompt, SamplingParams(**params), sink=lambda d: None))  # type: ignore[arg-type]


def run_step(scheduler: Scheduler) -> list[tuple[Sequence, int, int, str]]:
    """One step without a model: (sequence, start, token count, logits wanted) per chunk; the chunks count as computed."""
    plan = scheduler.schedule()
    scheduler.commit(plan)
    return [(s, c.start, len(c.tokens), c.logits) for s, c in plan]


def test_a_long_prompt_is_prefilled_in_chunks_of_the_step_budget() -> None:
    scheduler, _, _ = make(16, step_tokens=5)
    a = seq(list(range(12)))
    scheduler.add(a)
    assert run_step(scheduler) == [(a, 0, 5, "none")]
    assert run_step(scheduler) == [(a, 5, 5, "none")]
    assert run_step(scheduler) == [(a, 10, 2, "last")]  # the chunk that reaches the end wants its logits
    a.token_ids.append(99)  # the sampled token
    assert run_step(scheduler) == [(a, 12, 1, "last")]


def test_decodes_go_first_and_a_new_prompt_gets_the_rest_of_the_budget() -> None:
    scheduler, _, _ = make(16, step_tokens=5)
    a, b = seq([1, 2, 3]), seq(list(range(10, 22)))
    scheduler.add(a)
    run_step(scheduler)
    a.token_ids.append(7)
    scheduler.add(b)
    assert run_step(scheduler) == [(a, 3, 1, "last"), (b, 0, 4, "none")]


def test_admission_stops_at_the_batch_size() -> None:
    scheduler, _, _ = make(16, batch=1)
    a, b = seq([1, 2, 3]), seq([4, 5, 6])
    scheduler.add(a)
    scheduler.add(b)
    assert [s for s, *_ in run_step(scheduler)] == [a]
    assert list(scheduler.waiting) == [b]


def test_preemption_frees_the_latest_sequence_and_its_prefix_is_reused_later() -> None:
    scheduler, allocator, ended = make(4)
    a, b = seq(list(range(8))), seq(list(range(100, 108)))
    scheduler.add(a)
    scheduler.add(b)
    run_step(scheduler)  # both prompts fill two blocks each: the cache is full
    assert allocator.free_blocks == 0
    b_first, b_second = b.block_table
    a.token_ids.append(50)
    b.token_ids.append(51)
    # a needs a third block: b, admitted after it, gives its blocks back and waits in front;
    # a takes the block b freed last (its second), so b's first block still holds its cached prefix
    assert run_step(scheduler) == [(a, 8, 1, "last")]
    assert scheduler.preemptions == 1
    assert scheduler.running == [a] and list(scheduler.waiting) == [b]
    assert a.block_table[2] == b_second
    # waiting for room, b already holds its cached first block again; nothing is free
    assert (b.block_table, b.num_computed, b.num_cached) == ([b_first], BLOCK, BLOCK)
    assert allocator.free_blocks == 0
    assert ended.calls == []
    # a ends: b runs again, its first block from the cache, the rest computed
    assert scheduler.retire(a)
    assert allocator.free_blocks == 3
    assert run_step(scheduler) == [(b, BLOCK, 9 - BLOCK, "last")]
    assert b.block_table[0] == b_first and len(b.block_table) == 3


def test_a_sequence_alone_that_outgrows_the_cache_ends_with_length_and_frees_its_blocks() -> None:
    scheduler, allocator, ended = make(2)
    a = seq(list(range(8)))
    scheduler.add(a)
    run_step(scheduler)
    a.token_ids.append(9)
    assert run_step(scheduler) == []
    assert ended.calls == [(a, "length", None)]
    assert a.finished and allocator.free_blocks == 2


def test_a_prompt_larger_than_the_whole_cache_is_refused_with_an_error() -> None:
    scheduler, allocator, ended = make(2)
    a = seq(list(range(12)))
    scheduler.add(a)
    assert run_step(scheduler) == []
    assert [(s, reason) for s, reason, _ in ended.calls] == [(a, "error")]
    assert allocator.free_blocks == 2 and not scheduler.waiting


def test_cancelled_requests_end_without_running() -> None:
    scheduler, allocator, ended = make(4)
    a, b = seq([1, 2, 3]), seq([4, 5, 6])
    scheduler.add(a)
    run_step(scheduler)
    a.request.cancel()
    b.request.cancel()
    scheduler.add(b)
    assert run_step(scheduler) == []
    assert {(s, reason) for s, reason, _ in ended.calls} == {(a, "cancelled"), (b, "cancelled")}
    assert scheduler.running == [] and allocator.free_blocks == 4


def test_prompt_logprobs_bypass_the_prefix_cache_and_want_every_row() -> None:
    scheduler, _, _ = make(8)
    first = seq(list(range(9)))
    scheduler.add(first)
    run_step(scheduler)
    scheduler.retire(first)
    echo = seq(list(range(9)), prompt_logprobs=True)
    scheduler.add(echo)
    assert run_step(scheduler) == [(echo, 0, 9, "all")]
    assert echo.num_cached == 0
