"""The blocked (paged) KV cache: fixed-size blocks, reference counts, and a prefix cache over full blocks.

A sequence owns a list of block ids (its block table); token ``i`` of it lives in slot
``table[i // block_size] * block_size + i % block_size`` of every layer's cache. A block that is
full gets a hash chained over every token before it, so two prompts that share a prefix of whole
blocks share those blocks (prefix caching, as vLLM's automatic prefix caching). A freed block keeps
its hash and content until it is handed out again: freed blocks are reused least recently freed
first, and blocks that hold no cached prefix are reused before any that do.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from dataclasses import dataclass

import torch


class OutOfBlocks(RuntimeError):
    """No free block is left: the scheduler preempts a sequence and tries again."""


@dataclass
class _Block:
    ref: int = 0
    hash: int | None = None


def chain_hash(parent: int | None, tokens: Sequence[int]) -> int:
    return hash((parent, tuple(tokens)))


class BlockAllocator:
    def __init__(self, num_blocks: int, block_size: int) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"need at least one block of at least one slot, got {num_blocks}×{block_size}")
        self.block_size = block_size
        self.num_blocks = num_blocks
        self._blocks = [_Block() for _ in range(num_blocks)]
        self._free: collections.OrderedDict[int, None] = collections.OrderedDict.fromkeys(range(num_blocks))
        self._by_hash: dict[int, int] = {}
        self.prefix_hits = 0  # tokens served from the prefix cache (metrics, tests)

    @property
    def free_blocks(self) -> int:
        return len(self._free)

    def allocate(self) -> int:
        if not self._free:
            raise OutOfBlocks("the KV cache has no free block")
        bid, _ = self._free.popitem(last=False)
        block = self._blocks[bid]
        if block.hash is not None:  # evict the cached prefix it held
            if self._by_hash.get(block.hash) == bid:
                del self._by_hash[block.hash]
            block.hash = None
        block.ref = 1
        return bid

    def free(self, table: Sequence[int]) -> None:
        # the tail of a table goes back first so that a prompt's first blocks stay cached longest
        for bid in reversed(table):
            block = self._blocks[bid]
            block.ref -= 1
            if block.ref == 0:
                self._free[bid] = None
                if block.hash is None:
                    self._free.move_to_end(bid, last=False)

    def match_prefix(self, tokens: Sequence[int], limit: int) -> tuple[list[int], list[int]]:
        """Reuse the cached blocks of ``tokens``' longest cached prefix of whole blocks, at most ``limit`` tokens.

        Returns (block ids, their hashes); each returned block now has one more reference.
        """
        bs, blocks, hashes = self.block_size, [], []
        parent: int | None = None
        for start in range(0, limit - limit % bs, bs):
            h = chain_hash(parent, tokens[start : start + bs])
            bid = self._by_hash.get(h)
            if bid is None:
                break
            block = self._blocks[bid]
            if block.ref == 0:
                self._free.pop(bid, None)
            block.ref += 1
            blocks.append(bid)
            hashes.append(h)
            parent = h
        self.prefix_hits += len(blocks) * bs
        return blocks, hashes

    def register(self, bid: int, h: int) -> None:
        """Make a full block findable by its chained hash (first writer wins)."""
        self._blocks[bid].hash = h
        self._by_hash.setdefault(h, bid)


class PagedKVCache:
    """Per-layer key and value tensors ``[num_blocks * block_size, kv_heads, head_dim]`` plus the allocator."""

    def __init__(
        self,
        *,
        layers: int,
        kv_heads: int,
        head_dim: int,
        num_blocks: int,
        block_size: int,
        dtype: torch.dtype,
        device: torch.device | str = "cpu",
    ) -> None:
        self.allocator = BlockAllocator(num_blocks, block_size)
        self.block_size = block_size
        shape = (num_blocks * block_size, kv_heads, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]

    def write(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        self.k[layer].index_copy_(0, slots, k)
        self.v[layer].index_copy_(0, slots, v)
