"""Decode attention on the CPU row cache by puyu's own kernel (``csrc/decode_attention.cpp``).

Why puyu's own: torch has no CPU attention kernel for one query per sequence over a strided cache
(SDPA's flash kernel tiles over query blocks and is ~20x slower here; two batched matmuls copy the
cut views and round scores to bf16), and vLLM's CPU kernels read its own paged layout only. The
kernel reads each row's live positions in place, the query heads of a group together, in fp32:
~2.5x faster than the matmuls on a 32-sequence bf16 step (AVX-512). Without AVX-512 or a compiler
the matmul path (``attention.row_decode``) serves.
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
    what="decode attention runs on torch's batched matmuls",
)
DTYPES = (torch.float32, torch.bfloat16)
MAX_GROUP = 8  # query heads per key-value head the kernel is instantiated for


def usable(dtype: torch.dtype, q_heads: int, kv_heads: int) -> bool:
    """Whether the kernel serves a model of this dtype and head layout here (builds it at the first call)."""
    if dtype not in DTYPES or q_heads % kv_heads or q_heads // kv_heads > MAX_GROUP:
        return False
    return load(DECODE_ATTENTION)


def decode_rows(
    q: torch.Tensor, k_stored: torch.Tensor, v_rows: torch.Tensor, lens: torch.Tensor, scale: float
) -> torch.Tensor:
    """``q [R, Hq, D]`` of rows ``0..R`` over their first ``lens[r]`` positions: ``[R, Hq, D]``.

    ``k_stored [rows, Hkv, D, C]`` and ``v_rows [rows, Hkv, C, D]`` are the row cache's tensors of one
    layer (``RowCache.key_storage`` / ``RowCache.v``); a row with ``lens[r] == 0`` gets zeros.
    """
    out: torch.Tensor = torch.ops.puyu.decode_attention(q, k_stored, v_rows, lens, scale)
    return out
