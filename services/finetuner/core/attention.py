"""Document-aware attention for packed rows, registered with transformers' AttentionInterface.

Packing puts several examples into one sequence; ``position_ids`` restart at 0 where each one
begins. Left to itself, transformers turns that into a 4-D block-diagonal mask and runs masked
attention over the whole row: O(row²) work and a mask as large, most of it masked out. Here no mask
is built (the name is registered with a mask function that returns None when there is no padding
mask) and attention runs per example with ``is_causal=True``: O(Σ example²), exact, and SDPA's
fused CPU/GPU kernels apply. A batch that does carry a padding mask goes to the stock SDPA path.
"""

from __future__ import annotations

import functools
import logging
import threading
from typing import Any

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)
PACKED_ATTENTION = "puyu_packed"
# Architectures whose attention is plain causal softmax attention (at most a sliding window, checked
# below): no logit soft-capping, attention sinks or position biases that per-example SDPA would
# drop. Others keep transformers' own block-diagonal mask, exact and slower.
SUPPORTED_MODEL_TYPES = frozenset(
    {"llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "phi3", "olmo2", "granite"}
)
_UNSUPPORTED_KWARGS = ("softcap", "s_aux", "position_bias")
_cache = threading.local()  # per thread: (position_ids tensor, its segment lengths per row)


def segment_lengths(position_ids: torch.Tensor) -> list[list[int]]:
    """Per row, the lengths of the runs in which positions count up by one (the packed examples)."""
    pos = position_ids.detach()
    if pos.dim() == 1:
        pos = pos.unsqueeze(0)
    width = pos.shape[-1]
    breaks = torch.ones_like(pos, dtype=torch.bool)
    breaks[:, 1:] = pos[:, 1:] != pos[:, :-1] + 1
    rows, cols = breaks.nonzero(as_tuple=True)
    starts: list[list[int]] = [[] for _ in range(pos.shape[0])]
    for r, c in zip(rows.tolist(), cols.tolist(), strict=True):  # one host transfer per forward
        starts[r].append(c)
    return [[b - a for a, b in zip(s, [*s[1:], width], strict=True)] for s in starts]


def _segments(position_ids: torch.Tensor) -> list[list[int]]:
    # Every layer gets the same position_ids tensor: work the segments out once per forward.
    hit = getattr(_cache, "value", None)
    if hit is not None and hit[0] is position_ids:
        return hit[1]  # type: ignore[no-any-return]
    lengths = segment_lengths(position_ids)
    _cache.value = (position_ids, lengths)
    return lengths


def packed_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """query (B, H, T, D), key/value (B, Hkv, T, D) -> (B, T, H, D), attending within examples only."""
    position_ids = kwargs.get("position_ids")
    plain = (
        attention_mask is not None  # padded batch: its mask says what to do
        or query.shape[2] != key.shape[2]  # KV cache (generation): not a packed row
        or not getattr(module, "is_causal", True)
        or kwargs.get("is_causal") is False
        or kwargs.get("output_attentions")
    )
    if plain or position_ids is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    sdpa = functools.partial(
        F.scaled_dot_product_attention,
        dropout_p=dropout,
        is_causal=True,
        scale=scaling,
        enable_gqa=query.shape[1] != key.shape[1],  # grouped-query heads without copying K and V
    )
    for name in _UNSUPPORTED_KWARGS:
        if kwargs.get(name) is not None:
            raise NotImplementedError(f"packed attention does not implement {name!r}")
    rows = _segments(position_ids)
    window = kwargs.get("sliding_window")
    if window is not None and max(max(lengths) for lengths in rows) > window:
        raise ValueError(f"a packed example is longer than the sliding window ({window}) of this model")
    if all(len(lengths) == 1 for lengths in rows):  # nothing packed: one causal call for the batch
        whole = sdpa(query, key, value)
        return whole.transpose(1, 2).contiguous(), None
    if len(rows) == 1 and query.shape[0] > 1:  # one position row broadcast over the batch
        rows = rows * query.shape[0]
    out = []
    # split, not slicing: split's backward is one concatenation, a slice's a full-size zero fill
    for q, k, v, lengths in zip(query.split(1), key.split(1), value.split(1), rows, strict=True):
        if len(lengths) == 1:
            out.append(sdpa(q, k, v))
            continue
        parts = zip(q.split(lengths, 2), k.split(lengths, 2), v.split(lengths, 2), strict=True)
        out.append(torch.cat([sdpa(qs, ks, vs) for qs, ks, vs in parts], dim=2))
    merged = out[0] if len(out) == 1 else torch.cat(out, dim=0)
    return merged.transpose(1, 2).contiguous(), None


def _padding_only_mask(**kwargs: Any) -> Any:
    """No mask at all for unpadded input (packing is handled in the attention above); a padded batch
    gets the usual SDPA mask. transformers calls mask functions with keywords only."""
    if kwargs.get("attention_mask") is None:
        return None
    from transformers.masking_utils import sdpa_mask

    return sdpa_mask(**kwargs)


def register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(PACKED_ATTENTION, packed_attention_forward)
    AttentionMaskInterface.register(PACKED_ATTENTION, _padding_only_mask)


def use_packed_attention(model: Any, max_len: int | None = None) -> bool:
    """Switch ``model`` to packed attention; False (it keeps its own) when its architecture is not
    one known to be exact with it, or a sequence of ``max_len`` could exceed its sliding window."""
    config = model.config
    model_type = getattr(config, "model_type", "")
    window = getattr(config, "sliding_window", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        log.info("packed attention not used for model type %r: keeping transformers' mask", model_type)
        return False
    if window is not None and (max_len is None or max_len > window):
        log.info("packed attention not used: sequences may exceed the sliding window (%s)", window)
        return False
    register()
    try:
        model.set_attn_implementation(PACKED_ATTENTION)
    except (ValueError, KeyError, AttributeError) as exc:
        log.info("packed attention not available for %s: %s", type(model).__name__, exc)
        return False
    return bool(getattr(config, "_attn_implementation", None) == PACKED_ATTENTION)


def restore_default_attention(model: Any) -> None:
    """Back to SDPA before saving, so exported folders carry nothing of puyu's."""
    if getattr(model.config, "_attn_implementation", None) == PACKED_ATTENTION:
        model.set_attn_implementation("sdpa")


def packed_attention_active(model: Any) -> bool:
    config = getattr(model, "config", None)
    return getattr(config, "_attn_implementation", None) == PACKED_ATTENTION
