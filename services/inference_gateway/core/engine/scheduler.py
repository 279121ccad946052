"""Which tokens run in the next step, over the paged KV cache.

Scheduling is iteration-level: at every step the running sequences each get their next tokens (one
to decode, or the next prompt chunk), and the rest of the step's token budget goes to newly admitted
requests (chunked prefill, decode first, so a long prompt never stalls the streams already running:
LMDeploy's "split & fuse"). A new request first takes the cached blocks of its longest cached prompt
prefix (prefix caching). When the cache runs out of blocks the most recently admitted sequence is
preempted: its blocks are freed and it is recomputed later (mostly from the prefix cache).
"""

from __future__ import annotations

import collections
from collections.abc import Callable

from services.inference_gateway.core.engine.sequence import Sequence
from services.inference_gateway.core.kv_cache import BlockAllocator, OutOfBlocks, chain_hash
from services.inference_gateway.core.model_runner import Chunk
from services.inference_gateway.core.row_cache import RowCache

# (sequence, finish reason, error): a sequence the scheduler ended (cancelled, out of cache)
FinishedCallback = Callable[[Sequence, str, str | None], None]


class Scheduler:
    def __init__(
        self,
        allocator: BlockAllocator,
        *,
        rows: RowCache | None,
        max_batch_size: int,
        max_step_tokens: int,
        prefix_caching: bool,
        on_finished: FinishedCallback,
    ) -> None:
        self.allocator = allocator
        self.rows = rows
        self.max_batch_size = max_batch_size
        self.max_step_tokens = max_step_tokens
        self.prefix_caching = prefix_caching
        self.on_finished = on_finished
        self.waiting: collections.deque[Sequence] = collections.deque()
        self.running: list[Sequence] = []  # in admission order; finished ones leave after the step
        self.preemptions = 0

    @property
    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def schedule(self) -> list[tuple[Sequence, Chunk]]:
        """The chunks of the next step: the running sequences first, then newly admitted ones."""
        for seq in [*self.running]:
            if seq.request.cancelled.is_set():
                self._end(seq, "cancelled")
        self.drop_finished()
        plan = self._schedule_running()
        return self._admit_waiting(plan)

    def commit(self, plan: list[tuple[Sequence, Chunk]]) -> None:
        """After the forward: the chunks' tokens are in the cache; full blocks become findable for prefix reuse."""
        block_size = self.allocator.block_size
        for seq, chunk in plan:
            seq.num_computed += len(chunk.tokens)
            hashes, tokens = seq.block_hashes, seq.token_ids
            while (len(hashes) + 1) * block_size <= seq.num_computed:
                i = len(hashes)
                block_hash = chain_hash(
                    hashes[-1] if hashes else None, tokens[i * block_size : (i + 1) * block_size]
                )
                self.allocator.register(seq.block_table[i], block_hash)
                hashes.append(block_hash)

    def retire(self, seq: Sequence) -> bool:
        """Mark ``seq`` finished and free its blocks; False when it already was."""
        if seq.finished:
            return False
        seq.finished = True
        if seq.block_table or seq.kv_row is not None:
            self._free(seq)
        return True

    def drop_finished(self) -> None:
        self.running = [s for s in self.running if not s.finished]

    # ------------------------------------------------------------------------------ internals
    def _end(self, seq: Sequence, reason: str, error: str | None = None) -> None:
        if self.retire(seq):
            self.on_finished(seq, reason, error)

    def _schedule_running(self) -> list[tuple[Sequence, Chunk]]:
        budget = self.max_step_tokens
        plan: list[tuple[Sequence, Chunk]] = []
        for seq in list(self.running):
            if seq.finished or seq not in self.running:  # preempted for an earlier one in this loop
                continue
            take = min(len(seq.token_ids) - seq.num_computed, budget)
            if take <= 0:
                continue
            while True:
                try:
                    self._allocate_up_to(seq, seq.num_computed + take)
                    break
                except OutOfBlocks:
                    if not self._preempt_for(seq):
                        self._end(seq, "length")  # alone and out of cache: it cannot grow
                        break
            if not seq.finished:
                plan.append((seq, self._chunk(seq, take)))
                budget -= take
        # a sequence planned early may have been preempted for a later one
        return [(s, c) for s, c in plan if s in self.running and not s.finished]

    def _admit_waiting(self, plan: list[tuple[Sequence, Chunk]]) -> list[tuple[Sequence, Chunk]]:
        budget = self.max_step_tokens - sum(len(c.tokens) for _, c in plan)
        while budget > 0 and self.waiting and len(self.running) < self.max_batch_size:
            seq = self.waiting[0]
            if seq.request.cancelled.is_set():
                self.waiting.popleft()
                self._end(seq, "cancelled")
                continue
            if not seq.prefix_matched:
                self._match_prefix(seq)
            take = min(len(seq.token_ids) - seq.num_computed, budget)
            try:
                self._allocate_up_to(seq, seq.num_computed + take)
            except OutOfBlocks:
                if self.running:
                    break  # wait for running sequences to free blocks
                self.waiting.popleft()
                self._end(seq, "error", "the request does not fit in the KV cache")
                continue
            self.waiting.popleft()
            if self.rows is not None:
                seq.kv_row = self.rows.acquire()
            self.running.append(seq)
            plan.append((seq, self._chunk(seq, take)))
            budget -= take
        return plan

    def _match_prefix(self, seq: Sequence) -> None:
        seq.prefix_matched = True
        # prompt logprobs need the whole prompt computed; and at least one token is computed, for its logits
        if self.prefix_caching and (seq.prompt_logprobs is None or seq.sent_first_delta):
            seq.block_table, seq.block_hashes = self.allocator.match_prefix(
                seq.token_ids, len(seq.token_ids) - 1
            )
            seq.num_computed = seq.num_cached = len(seq.block_table) * self.allocator.block_size

    def _allocate_up_to(self, seq: Sequence, end: int) -> None:
        """Give ``seq`` the blocks for its first ``end`` tokens (OutOfBlocks: those it got, it keeps)."""
        need = -(-end // self.allocator.block_size) - len(seq.block_table)
        for _ in range(need):
            seq.block_table.append(self.allocator.allocate())

    def _chunk(self, seq: Sequence, take: int) -> Chunk:
        start, end = seq.num_computed, seq.num_computed + take
        if seq.prompt_logprobs is not None and not seq.sent_first_delta and start < seq.num_prompt_tokens:
            logits = "all"
        else:
            logits = "last" if end == len(seq.token_ids) else "none"
        return Chunk(seq.token_ids[start:end], start, seq.block_table, logits, seq.kv_row)

    def _preempt_for(self, seq: Sequence) -> bool:
        """Free the blocks of the latest admitted other running sequence; False when there is none."""
        for victim in reversed(self.running):
            if victim is not seq and not victim.finished and victim.block_table:
                self._free(victim)
                if victim.prompt_logprobs is not None and not victim.sent_first_delta:
                    victim.prompt_logprobs = [None]  # its prompt is computed again from the start
                self.running.remove(victim)
                self.waiting.appendleft(victim)
                self.preemptions += 1
                return True
        return False

    def _free(self, seq: Sequence) -> None:
        self.allocator.free(seq.block_table)
        if seq.kv_row is not None and self.rows is not None:
            self.rows.release(seq.kv_row)
            seq.kv_row = None
        seq.block_table, seq.block_hashes, seq.num_computed, seq.prefix_matched = [], [], 0, False
