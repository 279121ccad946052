"""Contiguous keys and values per running sequence: the attention layout that is cheaper on the CPU.

The paged cache (``kv_cache``) stays the store of record (block accounting, prefix caching), but on
the CPU reading it costs a gather of every sequence's whole context per layer per step, and
attention over the gathered, transposed copy is slower again. So on the CPU each running sequence
also owns a row of ``[rows, kv_heads, capacity, head_dim]`` tensors: every step's keys and values are
written to both, a prefix-cache hit is copied into the row once, and attention reads a view of the
rows without copying (``attention.row_decode`` / ``row_prefill``). Capacity grows by doubling up to
the model's context length, so memory follows the longest live sequence.

Keys are stored transposed, ``[rows, kv_heads, head_dim, capacity]``, and exposed as the same
``[rows, kv_heads, capacity, head_dim]`` views: the decode's ``q @ k^T`` then reads them as a plain
strided matrix, where the untransposed layout made the bf16 batched matmul copy every row's keys on
every layer (a third of the decode attention's time on the CPU).

A quantised KV cache (int8, fp8) keeps its rows quantised too, with the same per (token, head)
scales (``k_scale``, ``v_scale``: ``[rows, kv_heads, capacity]``): a full-precision copy would take
back the memory the 8-bit blocks save. Values arrive already quantised (``PagedKVCache.write``
returns what it stored), so rows and blocks hold the same bytes and a prefix-cache hit is copied
without requantising.
"""

from __future__ import annotations

import torch

from services.inference_gateway.core.kv_cache import SCALE_DTYPE, KVCacheDtype


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
        kv_dtype: KVCacheDtype | None = None,
    ) -> None:
        if rows < 1 or max_len < 1:
            raise ValueError(f"need at least one row of one position, got {rows}×{max_len}")
        self.rows, self.kv_heads, self.head_dim, self.max_len = rows, kv_heads, head_dim, max_len
        self.dtype, self.device = dtype, torch.device(device)
        self.spec = kv_dtype or KVCacheDtype("auto", dtype)
        self.capacity = min(initial, max_len)
        shape = (rows, kv_heads, self.capacity, head_dim)
        store = self.spec.storage
        # k[layer]: a [rows, kv_heads, capacity, head_dim] view of keys stored [..., head_dim, capacity]
        self.k = [self._keys(rows, self.capacity, store) for _ in range(layers)]
        self.v = [torch.zeros(shape, dtype=store, device=self.device) for _ in range(layers)]
        self.k_scale: list[torch.Tensor] | None = None
        self.v_scale: list[torch.Tensor] | None = None
        if self.spec.quantized:
            self.k_scale = [
                torch.zeros(shape[:3], dtype=SCALE_DTYPE, device=self.device) for _ in range(layers)
            ]
            self.v_scale = [
                torch.zeros(shape[:3], dtype=SCALE_DTYPE, device=self.device) for _ in range(layers)
            ]
        self.filled = [0] * rows  # positions 0..filled[r] of row r hold its sequence's keys and values
        self._free = list(range(rows))

    def _keys(self, rows: int, capacity: int, dtype: torch.dtype) -> torch.Tensor:
        stored = torch.zeros(rows, self.kv_heads, self.head_dim, capacity, dtype=dtype, device=self.device)
        return stored.transpose(2, 3)

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
        for store in (self.k, self.v, self.k_scale or [], self.v_scale or []):
            for i, old in enumerate(store):
                if store is self.k:  # keeps the transposed storage
                    new = self._keys(self.rows, cap, old.dtype)
                else:
                    new = old.new_zeros(self.rows, self.kv_heads, cap, *old.shape[3:])
                new[:, :, : self.capacity] = old
                store[i] = new
        self.capacity = cap

    @property
    def nbytes(self) -> int:
        tensors = [*self.k, *self.v, *(self.k_scale or []), *(self.v_scale or [])]
        return sum(t.numel() * t.element_size() for t in tensors)

    def views(
        self, layer: int, rows: int | slice, length: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Views (no copy) of ``rows``' first ``length`` positions: keys, values and their scales (or None)."""
        span = (rows, slice(None), slice(0, length))
        ks = None if self.k_scale is None else self.k_scale[layer][span]
        vs = None if self.v_scale is None else self.v_scale[layer][span]
        return self.k[layer][span], self.v[layer][span], ks, vs

    def key_storage(self, layer: int) -> torch.Tensor:
        """Keys of ``layer`` as stored, ``[rows, kv_heads, head_dim, capacity]`` (contiguous)."""
        return self.k[layer].transpose(2, 3)

    def scales(self, layer: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The key and value scales of ``layer``, ``[rows, kv_heads, capacity]`` (None, None unquantised)."""
        if self.k_scale is None or self.v_scale is None:
            return None, None
        return self.k_scale[layer], self.v_scale[layer]

    def write(
        self,
        layer: int,
        rows: torch.Tensor,
        positions: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        k_scale: torch.Tensor | None = None,
        v_scale: torch.Tensor | None = None,
    ) -> None:
        """Token ``i`` (``k[i], v[i]: [kv_heads, head_dim]``, as stored) goes to ``rows[i]`` at ``positions[i]``;
        a quantised cache takes its scales ``[T, kv_heads]`` too."""
        self.k[layer][rows, :, positions] = k
        self.v[layer][rows, :, positions] = v
        if self.k_scale is not None and self.v_scale is not None:
            if k_scale is None or v_scale is None:
                raise ValueError("a quantised row cache needs the scales of what it stores")
            self.k_scale[layer][rows, :, positions] = k_scale
            self.v_scale[layer][rows, :, positions] = v_scale

    def fill(
        self,
        layer: int,
        row: int,
        start: int,
        k: torch.Tensor,
        v: torch.Tensor,
        k_scale: torch.Tensor | None = None,
        v_scale: torch.Tensor | None = None,
    ) -> None:
        """Copy ``k, v [n, kv_heads, head_dim]`` (as stored, e.g. a prefix-cache hit) to positions
        ``start..start+n`` of ``row``."""
        end = start + k.shape[0]
        self.k[layer][row, :, start:end] = k.transpose(0, 1)
        self.v[layer][row, :, start:end] = v.transpose(0, 1)
        if self.k_scale is not None and self.v_scale is not None:
            if k_scale is None or v_scale is None:
                raise ValueError("a quantised row cache needs the scales of what it stores")
            self.k_scale[layer][row, :, start:end] = k_scale.transpose(0, 1)
            self.v_scale[layer][row, :, start:end] = v_scale.transpose(0, 1)
