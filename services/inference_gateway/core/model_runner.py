"""The model step on the paged KV cache: one forward over a flat batch of chunks (decodes and prefill chunks).

transformers' own forward wants a rectangular cache; paged attention needs the attention call itself
to read the block tables, so the runner drives the Hugging Face modules of a Llama-family model
(embeddings, per-layer projections, norms, MLP, rotary embedding, head) and does the attention
itself: all tokens of a step go through each projection as one matrix, then decode tokens attend in
one call and each prefill chunk in its own. The families whose decoder layer has that shape: Llama
(any rope scaling: the model's own rotary module computes cos/sin), Mistral, Qwen2 (biases live in
the projections), Qwen3 (q/k norms per head), and the sparse mixture-of-experts Qwen2-MoE (shared
expert included) and Mixtral, whose MoE block is the module's own forward over the step's tokens
(routing is per token, so a flat batch routes as transformers does). InternLM2/InternLM3 arrive
here as Llama (``shared.hf_models`` converts them on load).

Keys and values always go to the paged cache (blocks, prefix caching); where attention reads them
depends on ``kv_layout``: ``paged`` reads the blocks (``paged_decode``, the Triton kernel in place on
CUDA), ``rows`` (the CPU default) reads contiguous per-sequence rows (``row_cache``), which saves
the per-step gather of every context. The caches store keys and values in the model's dtype or, with
``kv_cache_dtype`` int8 / fp8, in 8 bits with per (token, head) scales (``kv_cache``); attention
computes in the model's dtype; the logits leave in fp32.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from services.inference_gateway.core import cpu_attention, cpu_fused
from services.inference_gateway.core.attention import (
    causal_mask,
    paged_decode,
    prefill_attention,
    row_decode,
    row_prefill,
)
from services.inference_gateway.core.cpu_linear import fused_mlp
from services.inference_gateway.core.kv_cache import PagedKVCache, resolve_kv_cache_dtype
from services.inference_gateway.core.row_cache import RowCache
from services.inference_gateway.core.sampling import InvalidRequest
from shared.quantization import prepare_for_serving

# architectures whose decoder layer is Llama's (pre-norm, q/k/v/o projections, rotary, gated MLP or
# a sparse MoE block); ``shared.hf_models`` loads InternLM2/InternLM3 as llama
SUPPORTED = {"llama", "mistral", "qwen2", "qwen3", "qwen2_moe", "mixtral"}


def sliding_window(model: Any) -> int | None:
    """The smallest attention window of any layer (None: every layer attends to the whole context).

    Mistral and Mixtral name it in the config; Qwen2's layers carry it where ``layer_types`` make
    them sliding. The runner attends to the whole context, which equals a window of ``w`` tokens as
    long as no sequence is longer than ``w``: the engine caps its lengths there.
    """
    cfg = model.config
    windows = [getattr(layer.self_attn, "sliding_window", None) for layer in model.model.layers]
    if cfg.model_type in ("mistral", "mixtral"):
        windows.append(getattr(cfg, "sliding_window", None))
    active = [int(w) for w in windows if w]
    return min(active) if active else None


@dataclass
class Chunk:
    """Tokens of one sequence to run at positions ``start..start+len(tokens)``, with its block table."""

    tokens: Sequence[int]
    start: int
    table: Sequence[int]
    logits: str = "last"  # last | all | none
    row: int | None = None  # its row in the row cache (the CPU layout)


class ModelRunner:
    def __init__(
        self,
        model: Any,
        *,
        num_blocks: int,
        block_size: int = 16,
        device: torch.device | str = "cpu",
        kv_layout: str = "auto",
        max_rows: int = 16,
        kv_cache_dtype: str = "auto",
    ) -> None:
        cfg = model.config
        if cfg.model_type not in SUPPORTED:
            raise InvalidRequest(
                f"model type {cfg.model_type!r} is not supported by the paged engine "
                f"(supported: {', '.join(sorted(SUPPORTED))})"
            )
        if kv_layout not in ("auto", "rows", "paged"):
            raise InvalidRequest(f"kv_layout must be auto, rows or paged, got {kv_layout!r}")
        self.model = model
        self.device = torch.device(device)
        self.core = model.model
        attn = self.core.layers[0].self_attn
        self.head_dim = attn.head_dim
        self.scale = float(attn.scaling)
        self.q_heads = cfg.num_attention_heads
        self.kv_heads = cfg.num_key_value_heads
        self.block_size = block_size
        # per layer: the gated MLP fused over packed weights (``cpu_linear``), or None for the module's own
        self.mlps = [fused_mlp(layer.mlp) for layer in self.core.layers]
        # norms, residual adds and rotary embeddings in one pass each (``cpu_fused``), where they build
        self.fused = self.device.type == "cpu" and cpu_fused.usable(model)
        window = sliding_window(model)
        self.max_positions = min(
            int(getattr(cfg, "max_position_embeddings", 0) or 1 << 30), window or 1 << 30
        )
        dtype = next(model.parameters()).dtype  # the KV cache holds what the projections produce
        # quantised projections (shared.quantization.QuantLinear): their int4/int8 kernel's form for
        # this dtype, the checkpoint's packed copy freed (the engine never saves the model)
        prepare_for_serving(model, dtype)
        spec = resolve_kv_cache_dtype(kv_cache_dtype, dtype)
        self.cache = PagedKVCache(
            layers=len(self.core.layers),
            kv_heads=self.kv_heads,
            head_dim=self.head_dim,
            num_blocks=num_blocks,
            block_size=block_size,
            dtype=dtype,
            device=self.device,
            kv_dtype=spec,
        )
        # the Triton kernel reads the paged cache in place on CUDA; the CPU reads contiguous rows
        if kv_layout == "auto":
            kv_layout = "paged" if self.device.type == "cuda" else "rows"
        self.kv_layout = kv_layout
        self.rows: RowCache | None = None
        # decodes over the CPU rows take puyu's kernel where it builds (``cpu_attention``)
        self.native_decode = False
        if kv_layout == "rows":
            max_len = min(self.max_positions, num_blocks * block_size)
            self.rows = RowCache(
                layers=len(self.core.layers),
                rows=max_rows,
                kv_heads=self.kv_heads,
                head_dim=self.head_dim,
                max_len=max_len,
                dtype=dtype,
                device=self.device,
                kv_dtype=spec,
            )
            self.native_decode = self.device.type == "cpu" and cpu_attention.usable(
                dtype, self.q_heads, self.kv_heads, spec.storage
            )

    def _slots(self, table: Sequence[int], start: int, end: int) -> list[int]:
        bs = self.block_size
        return [table[p // bs] * bs + p % bs for p in range(start, end)]

    @torch.inference_mode()
    def forward(self, chunks: Sequence[Chunk]) -> list[torch.Tensor | None]:
        """Run the chunks; per chunk, the logits of its last token ``[V]``, of all its tokens ``[C, V]``, or None."""
        if self.rows is not None:
            return self._forward_rows(chunks)
        return self._forward_paged(chunks)

    def _forward_paged(self, chunks: Sequence[Chunk]) -> list[torch.Tensor | None]:
        dev = self.device
        ids: list[int] = []
        pos: list[int] = []
        slots: list[int] = []
        bounds: list[tuple[int, int]] = []
        dec_rows: list[int] = []
        dec_tables: list[list[int]] = []
        dec_lens: list[int] = []
        pre: list[tuple[int, int, torch.Tensor, int]] = []
        for c in chunks:
            n, first = len(c.tokens), len(ids)
            ids.extend(c.tokens)
            pos.extend(range(c.start, c.start + n))
            slots.extend(self._slots(c.table, c.start, c.start + n))
            bounds.append((first, first + n))
            if n == 1:
                dec_rows.append(first)
                dec_tables.append(list(c.table))
                dec_lens.append(c.start + 1)
            else:
                ctx = torch.tensor(self._slots(c.table, 0, c.start + n), device=dev)
                pre.append((first, first + n, ctx, c.start))
        slot_t = torch.tensor(slots, device=dev)
        if dec_rows:
            width = max(len(t) for t in dec_tables)
            bt = torch.tensor([t + [0] * (width - len(t)) for t in dec_tables], device=dev)
            dl = torch.tensor(dec_lens, device=dev)
            dr = torch.tensor(dec_rows, device=dev)

        def attend(li: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            self.cache.write(li, slot_t, k, v)
            kc, vc = self.cache.k[li], self.cache.v[li]
            ks, vs = self.cache.scales(li)  # None, None unless the cache is 8-bit
            out = torch.empty_like(q)
            if dec_rows:
                out[dr] = paged_decode(q[dr], kc, vc, bt, dl, self.block_size, self.scale, ks, vs)
            for a, b, ctx, start in pre:
                out[a:b] = prefill_attention(q[a:b], kc, vc, ctx, start, self.scale, ks, vs)
            return out

        x = self._layers(ids, pos, attend)
        return self._logits(chunks, bounds, x)

    def _forward_rows(self, chunks: Sequence[Chunk]) -> list[torch.Tensor | None]:
        rows = self.rows
        assert rows is not None
        dev = self.device
        ids: list[int] = []
        pos: list[int] = []
        slots: list[int] = []
        tok_rows: list[int] = []
        bounds: list[tuple[int, int]] = []
        dec_idx: list[int] = []  # token index of each decode
        dec_row: list[int] = []
        dec_len: list[int] = []
        fills: list[tuple[int, int, torch.Tensor]] = []  # (row, from, paged slots of from..start)
        pre: list[tuple[int, int, int, int, torch.Tensor | None]] = []  # (a, b, row, end, mask)
        for c in chunks:
            if c.row is None:
                raise ValueError("the rows layout needs a row for every chunk")
            n, first, end = len(c.tokens), len(ids), c.start + len(c.tokens)
            ids.extend(c.tokens)
            pos.extend(range(c.start, end))
            slots.extend(self._slots(c.table, c.start, end))
            tok_rows.extend([c.row] * n)
            bounds.append((first, first + n))
            if rows.filled[c.row] < c.start:  # a prefix-cache hit (or a resumed row): copy it in once
                have = rows.filled[c.row]
                fills.append((c.row, have, torch.tensor(self._slots(c.table, have, c.start), device=dev)))
            rows.filled[c.row] = end
            if n == 1:
                dec_idx.append(first)
                dec_row.append(c.row)
                dec_len.append(end)
            else:
                mask = None if c.start == 0 else causal_mask(c.start, n, dev)
                pre.append((first, first + n, c.row, end, mask))
        rows.reserve(max(pos) + 1)
        slot_t = torch.tensor(slots, device=dev)
        row_t = torch.tensor(tok_rows, device=dev)
        pos_t = torch.tensor(pos, device=dev)
        native = self.native_decode and bool(dec_idx)
        if dec_idx:
            span = max(dec_row) + 1  # the view covers rows 0..span; rows without a decode are masked
            packed = dec_row == list(range(span))  # the decodes are rows 0..span in order: no scatter
            di = torch.tensor(dec_idx, device=dev)
            dr = torch.tensor(dec_row, device=dev)
        if native:  # the kernel reads each row's live positions (0: a row without a decode)
            live_lens = [0] * span
            for r, n in zip(dec_row, dec_len, strict=True):
                live_lens[r] = n
            lens_t = torch.tensor(live_lens, device=dev)
        elif dec_idx:
            width = max(dec_len)
            # the batched matmul copies a view that cuts the rows' length; reading their whole capacity
            # (masked) copies nothing, cheaper once the longest context passes ~4/7 of it (bf16, 32
            # rows: 250 of 256 positions in 0.6x the time, 130 of 256 in 1.1x). 8-bit rows are
            # dequantised into a fresh tensor anyway, so they read only what is live.
            if rows.k_scale is None and rows.capacity <= 1.75 * width:
                width = rows.capacity
            lens = [1] * span
            for r, n in zip(dec_row, dec_len, strict=True):
                lens[r] = n
            live = torch.arange(width, device=dev)[None] < torch.tensor(lens, device=dev)[:, None]
            dtype = self.cache.dtype  # the model's (the cache may store 8 bits)
            bias = torch.zeros(live.shape, dtype=dtype, device=dev).masked_fill_(~live, float("-inf"))
            bias = bias[:, None, None]

        def attend(li: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            stored = self.cache.write(li, slot_t, k, v)  # as stored: 8-bit values and scales, or k, v
            for row, have, src in fills:
                rows.fill(li, row, have, *self.cache.stored(li, src))
            rows.write(li, row_t, pos_t, *stored)
            out = torch.empty_like(q)
            if dec_idx:
                if packed:
                    qd = q[di]
                else:
                    qd = q.new_zeros(span, *q.shape[1:])
                    qd[dr] = q[di]
                if native:
                    od = cpu_attention.decode_rows(
                        qd, rows.key_storage(li), rows.v[li], lens_t, self.scale, *rows.scales(li)
                    )
                else:
                    kd, vd, ksd, vsd = rows.views(li, slice(0, span), width)
                    od = row_decode(qd, kd, vd, bias, self.scale, ksd, vsd)
                out[di] = od if packed else od[dr]
            for a, b, row, end, mask in pre:
                kr, vr, ks, vs = rows.views(li, row, end)
                out[a:b] = row_prefill(q[a:b], kr, vr, mask, self.scale, ks, vs)
            return out

        x = self._layers(ids, pos, attend)
        return self._logits(chunks, bounds, x)

    def _layers(
        self,
        ids: list[int],
        pos: list[int],
        attend: Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        """The decoder stack over the step's flat tokens; ``attend(layer, q, k, v)`` stores k, v and attends."""
        dev = self.device
        x = self.core.embed_tokens(torch.tensor(ids, device=dev))
        cos, sin = self.core.rotary_emb(x[None], torch.tensor(pos, device=dev)[None])
        cos, sin = cos[0], sin[0]
        t = x.shape[0]
        layers = self.core.layers
        fused = self.fused
        h = cpu_fused.rms_norm(layers[0].input_layernorm, x) if fused else layers[0].input_layernorm(x)
        for li, layer in enumerate(layers):
            attn = layer.self_attn
            q = attn.q_proj(h).view(t, self.q_heads, self.head_dim)
            k = attn.k_proj(h).view(t, self.kv_heads, self.head_dim)
            v = attn.v_proj(h).view(t, self.kv_heads, self.head_dim)
            if hasattr(attn, "q_norm"):  # qwen3 normalises q and k per head
                q, k = attn.q_norm(q), attn.k_norm(k)
            if fused:
                q, k = cpu_fused.rotary(q, k, cos, sin)
            else:
                q, k = apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1)
            out = attn.o_proj(attend(li, q, k, v).reshape(t, -1))
            if fused:
                x, h = cpu_fused.add_rms_norm(layer.post_attention_layernorm, x, out)
            else:
                x = x + out
                h = layer.post_attention_layernorm(x)
            mlp = self.mlps[li]
            # [1, T, H]: the MoE blocks read (batch, length, hidden) and route each token alone
            out = mlp(h) if mlp is not None else layer.mlp(h[None])[0]
            if fused and li + 1 < len(layers):  # this residual add and the next layer's first norm
                x, h = cpu_fused.add_rms_norm(layers[li + 1].input_layernorm, x, out)
            else:
                x = x + out
                if li + 1 < len(layers):
                    h = layers[li + 1].input_layernorm(x)
        return x

    def _logits(
        self, chunks: Sequence[Chunk], bounds: list[tuple[int, int]], x: torch.Tensor
    ) -> list[torch.Tensor | None]:
        rows: list[int] = []
        for c, (a, b) in zip(chunks, bounds, strict=True):
            if c.logits == "all":
                rows.extend(range(a, b))
            elif c.logits == "last":
                rows.append(b - 1)
        logits = self.model.lm_head(self.core.norm(x[rows])).float() if rows else None
        result: list[torch.Tensor | None] = []
        i = 0
        for c, (a, b) in zip(chunks, bounds, strict=True):
            if c.logits == "all":
                assert logits is not None
                result.append(logits[i : i + b - a])
                i += b - a
            elif c.logits == "last":
                assert logits is not None
                result.append(logits[i])
                i += 1
            else:
                result.append(None)
        return result
