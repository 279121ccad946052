"""The model step on the paged KV cache: one forward over a flat batch of chunks (decodes and prefill chunks).

transformers' own forward wants a rectangular cache; paged attention needs the attention call itself
to read the block tables, so the runner drives the Hugging Face modules of a Llama-family model
(embeddings, per-layer projections, norms, MLP, rotary embedding, head) and does the attention
itself: all tokens of a step go through each projection as one matrix, then decode tokens attend
through ``paged_decode`` in one call and each prefill chunk through ``prefill_attention``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from services.inference_gateway.attention import paged_decode, prefill_attention
from services.inference_gateway.kv_cache import PagedKVCache
from services.inference_gateway.sampling import InvalidRequest

# architectures whose decoder layer is Llama's (pre-norm, q/k/v/o projections, rotary, gated MLP)
SUPPORTED = {"llama", "mistral", "qwen2", "qwen3"}


@dataclass
class Chunk:
    """Tokens of one sequence to run at positions ``start..start+len(tokens)``, with its block table."""

    tokens: Sequence[int]
    start: int
    table: Sequence[int]
    logits: str = "last"  # last | all | none


class ModelRunner:
    def __init__(
        self, model: Any, *, num_blocks: int, block_size: int = 16, device: torch.device | str = "cpu"
    ) -> None:
        cfg = model.config
        if cfg.model_type not in SUPPORTED:
            raise InvalidRequest(
                f"model type {cfg.model_type!r} is not supported by the paged engine "
                f"(supported: {', '.join(sorted(SUPPORTED))})"
            )
        self.model = model
        self.device = torch.device(device)
        self.core = model.model
        attn = self.core.layers[0].self_attn
        self.head_dim = attn.head_dim
        self.scale = float(attn.scaling)
        self.q_heads = cfg.num_attention_heads
        self.kv_heads = cfg.num_key_value_heads
        self.block_size = block_size
        dtype = next(model.parameters()).dtype
        self.cache = PagedKVCache(
            layers=len(self.core.layers),
            kv_heads=self.kv_heads,
            head_dim=self.head_dim,
            num_blocks=num_blocks,
            block_size=block_size,
            dtype=dtype,
            device=self.device,
        )

    def _slots(self, table: Sequence[int], start: int, end: int) -> list[int]:
        bs = self.block_size
        return [table[p // bs] * bs + p % bs for p in range(start, end)]

    @torch.inference_mode()
    def forward(self, chunks: Sequence[Chunk]) -> list[torch.Tensor | None]:
        """Run the chunks; per chunk, the logits of its last token ``[V]``, of all its tokens ``[C, V]``, or None."""
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
        input_ids = torch.tensor(ids, device=dev)
        positions = torch.tensor(pos, device=dev)
        slot_t = torch.tensor(slots, device=dev)
        if dec_rows:
            width = max(len(t) for t in dec_tables)
            bt = torch.tensor([t + [0] * (width - len(t)) for t in dec_tables], device=dev)
            dl = torch.tensor(dec_lens, device=dev)
            dr = torch.tensor(dec_rows, device=dev)

        x = self.core.embed_tokens(input_ids)
        cos, sin = self.core.rotary_emb(x[None], positions[None])
        cos, sin = cos[0], sin[0]
        t = x.shape[0]
        for li, layer in enumerate(self.core.layers):
            attn = layer.self_attn
            h = layer.input_layernorm(x)
            q = attn.q_proj(h).view(t, self.q_heads, self.head_dim)
            k = attn.k_proj(h).view(t, self.kv_heads, self.head_dim)
            v = attn.v_proj(h).view(t, self.kv_heads, self.head_dim)
            if hasattr(attn, "q_norm"):  # qwen3 normalises q and k per head
                q, k = attn.q_norm(q), attn.k_norm(k)
            q, k = apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1)
            self.cache.write(li, slot_t, k, v)
            kc, vc = self.cache.k[li], self.cache.v[li]
            out = torch.empty_like(q)
            if dec_rows:
                out[dr] = paged_decode(q[dr], kc, vc, bt, dl, self.block_size, self.scale)
            for a, b, ctx, start in pre:
                out[a:b] = prefill_attention(q[a:b], kc, vc, ctx, start, self.scale)
            x = x + attn.o_proj(out.reshape(t, -1))
            x = x + layer.mlp(layer.post_attention_layernorm(x))

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
