"""Decode attention on the CPU row cache by puyu's own kernel (``csrc/decode_attention.cpp``).

Why puyu's own: torch has no CPU attention kernel for one query per sequence over a strided cache
(SDPA's flash kernel tiles over query blocks and is ~20x slower here; two batched matmuls copy the
cut views and round scores to bf16), and vLLM's CPU kernels read its own paged layout only. The
kernel reads each row's live positions in place, the query heads of a group together, in fp32:
~2.5x faster than the matmuls on a 32-sequence bf16 step (AVX-512; an AVX2 build where it lacks). 8-bit rows (int8, fp8 e4m3 bits)
are read as stored, their per-position scales applied to the scores and probabilities, where the
matmul path dequantises every live position into a copy each step. Without AVX2 or a compiler the
matmul path (``attention.row_decode``) serves.
"""

from __future__ import annotations

from pathlib import Path

import torch

from shared.native_ops import NativeOp, load

CSRC = Path(__file__).with_name("csrc")
DECODE_ATTENTION = NativeOp(
    name="puyu_decode_attention",
    sources=(CSRC / "decode_attention.cpp",),
    cpu_flags=("avx512f", "avx512bw", "avx512vl"),
    cflags=("-O3", "-fopenmp", "-mavx512f", "-mavx512bw", "-mavx512vl"),
    what="decode attention takes the AVX2 build",
)
# the same source at 8 lanes, for CPUs without AVX-512
DECODE_ATTENTION_AVX2 = NativeOp(
    name="puyu_decode_attention_avx2",
    sources=(CSRC / "decode_attention.cpp",),
    cpu_flags=("avx2", "fma", "f16c"),
    cflags=("-O3", "-fopenmp", "-mavx2", "-mfma", "-mf16c"),
    what="decode attention runs on torch's batched matmuls",
)
DTYPES = (torch.float32, torch.bfloat16)
STORED_8BIT = (torch.int8, torch.uint8)  # int8 values, fp8 e4m3 bits (``kv_cache.KVCacheDtype.storage``)
MAX_GROUP = 8  # query heads per key-value head the kernel is instantiated for


def usable(dtype: torch.dtype, q_heads: int, kv_heads: int, stored: torch.dtype | None = None) -> bool:
    """Whether the kernel serves a model of this dtype and head layout, over rows stored in ``stored``
    (the model's dtype when None, or 8 bits with scales), here; builds it at the first call."""
    if dtype not in DTYPES or q_heads % kv_heads or q_heads // kv_heads > MAX_GROUP:
        return False
    if stored not in (None, dtype, *STORED_8BIT):
        return False
    return load(DECODE_ATTENTION) or load(DECODE_ATTENTION_AVX2)  # one registers the op: the widest that runs


def decode_rows(
    q: torch.Tensor,
    k_stored: torch.Tensor,
    v_rows: torch.Tensor,
    lens: torch.Tensor,
    scale: float,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """``q [R, Hq, D]`` of rows ``0..R`` over their first ``lens[r]`` positions: ``[R, Hq, D]``.

    ``k_stored [rows, Hkv, D, C]`` and ``v_rows [rows, Hkv, C, D]`` are the row cache's tensors of one
    layer (``RowCache.key_storage`` / ``RowCache.v``); a row with ``lens[r] == 0`` gets zeros. An 8-bit
    cache passes its fp16 scales ``[rows, Hkv, C]`` (``RowCache.k_scale`` / ``v_scale``); uint8 rows
    hold fp8 e4m3 bits.
    """
    fp8 = k_stored.dtype == torch.uint8
    out: torch.Tensor = torch.ops.puyu.decode_attention(
        q, k_stored, v_rows, lens, scale, k_scale, v_scale, fp8
    )
    return out
