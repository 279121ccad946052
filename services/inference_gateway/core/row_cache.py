"""Contiguous keys and values per running sequence: the attention layout that is cheaper on the CPU.

The paged cache (``kv_cache``) stays the store of record (block accounting, prefix caching), but on
the CPU reading it costs a gather of every sequence's whole context per layer per step, and
attention over the gathered, transposed copy is slower again. So on the CPU each running sequence
also owns a row of ``[rows, kv_heads, capacity, head_dim]`` tensors: every step's keys and values are
written to both, a prefix-cache hit is copied into the row once, and attention reads a view of the
rows without copying (``attention.row_decode`` / ``row_prefill``). Capacity grows by doubling up to
the model's context length, so memory follows the longest live sequence.
"""

from __future__ import annotations

import torch


class RowCache:
    def __init__(
        self,
        *,
        layers: int,
        rows: int,
        kv_heads: int,
        head_dim: int,
        max_len: int,
        dtype: torch.dtype,
        device: torch.device | str = "cpu",
        initial: int = 256,
    ) -> None:
        if rows < 1 or max_len < 1:
            raise ValueError(f"need at least one row of one position, got {rows}×{max_len}")
        self.rows, self.kv_heads, self.head_dim, self.max_len = rows, kv_heads, head_dim, max_len
        self.dtype, self.device = dtype, torch.device(device)
        self.capacity = min(initial, max_len)
        shape = (rows, kv_heads, self.capacity, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=self.device) for _ in range(layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=self.device) for _ in range(layers)]
        self.filled = [0] * rows  # positions 0..filled[r] of row r hold its sequence's keys and values
        self._free = list(range(rows))

    def acquire(self) -> int:
        if not self._free:
            raise RuntimeError(f"all {self.rows} rows are taken: more running sequences than max_batch_size")
        self._free.sort()  # lowest first: the rows in use stay packed at the front, so views stay short
        row = self._free.pop(0)
        self.filled[row] = 0
        return row

    def release(self, row: int) -> None:
        self.filled[row] = 0
        self._free.append(row)

    def reserve(self, length: int) -> None:
        """Make room for ``length`` positions per row (doubling, copying what is there)."""
        if length <= self.capacity:
            return
        if length > self.max_len:
            raise ValueError(f"{length} positions exceed the row length {self.max_len}")
        cap = self.capacity
        while cap < length:
            cap *= 2
        cap = min(cap, self.max_len)
        for store in (self.k, self.v):
            for i, old in enumerate(store):
                new = old.new_zeros(self.rows, self.kv_heads, cap, self.head_dim)
                new[:, :, : self.capacity] = old
                store[i] = new
        self.capacity = cap

    def write(
        self, layer: int, rows: torch.Tensor, positions: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> None:
        """Token ``i`` (``k[i], v[i]: [kv_heads, head_dim]``) goes to ``rows[i]`` at ``positions[i]``."""
        self.k[layer][rows, :, positions] = k
        self.v[layer][rows, :, positions] = v
