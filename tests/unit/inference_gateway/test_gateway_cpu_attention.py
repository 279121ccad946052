"""puyu's CPU decode-attention kernel against plain attention in float64 (``reference_attention``)."""

import pytest
import torch

from services.inference_gateway.core import cpu_attention
from services.inference_gateway.core.attention import reference_attention
from services.inference_gateway.core.row_cache import RowCache
from shared import native_ops

pytestmark = pytest.mark.skipif(
    not cpu_attention.usable(torch.float32, 4, 4),
    reason="puyu's decode-attention kernel needs AVX-512 and a C++ compiler (it did not load here)",
)


def _rows(rows: int, kv_heads: int, head_dim: int, capacity: int, dtype: torch.dtype) -> RowCache:
    cache = RowCache(
        layers=1,
        rows=rows,
        kv_heads=kv_heads,
        head_dim=head_dim,
        max_len=capacity,
        dtype=dtype,
        initial=capacity,
    )
    g = torch.Generator().manual_seed(0)
    k = torch.randn(rows, kv_heads, capacity, head_dim, generator=g).to(dtype)
    v = torch.randn(rows, kv_heads, capacity, head_dim, generator=g).to(dtype)
    cache.k[0].copy_(k)  # the keys' view: stored transposed underneath
    cache.v[0].copy_(v)
    return cache


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    ("q_heads", "kv_heads", "head_dim"), [(4, 4, 16), (12, 4, 64), (8, 1, 128), (16, 2, 80)]
)
def test_decode_kernel_equals_plain_attention(
    dtype: torch.dtype, q_heads: int, kv_heads: int, head_dim: int
) -> None:
    rows, capacity = 5, 70
    cache = _rows(rows, kv_heads, head_dim, capacity, dtype)
    q = torch.randn(rows, q_heads, head_dim, generator=torch.Generator().manual_seed(1)).to(dtype)
    lens = torch.tensor([1, 17, 70, 0, 33])  # a whole vector, tails, the full capacity, a row with no decode
    scale = head_dim**-0.5
    out = cpu_attention.decode_rows(q, cache.key_storage(0), cache.v[0], lens, scale)
    assert out.dtype == dtype and out.shape == q.shape
    for r in range(rows):
        n = int(lens[r])
        if n == 0:
            assert torch.count_nonzero(out[r]) == 0
            continue
        ref = reference_attention(
            q[r][None], cache.k[0][r, :, :n].transpose(0, 1), cache.v[0][r, :, :n].transpose(0, 1), scale
        )
        # fp32: float rounding only; bf16: the output's one rounding (the kernel computes in fp32)
        tol = 1e-5 if dtype == torch.float32 else 8e-3
        torch.testing.assert_close(out[r].double(), ref[0].double(), atol=tol, rtol=tol)


def test_unsupported_layouts_are_refused_by_name() -> None:
    assert not cpu_attention.usable(torch.float16, 4, 4)
    assert not cpu_attention.usable(torch.float32, 18, 2)  # 9 query heads per group
    cache = _rows(2, 1, 16, 16, torch.float32)
    with pytest.raises(RuntimeError, match="query heads must be 1 to 8 times"):
        cpu_attention.decode_rows(
            torch.zeros(2, 9, 16), cache.key_storage(0), cache.v[0], torch.tensor([1, 1]), 1.0
        )


def test_runner_takes_the_kernel_only_where_it_applies(monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    from services.inference_gateway.core.model_runner import Chunk, ModelRunner

    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    outs = {}
    for native in (True, False):
        monkeypatch.setattr(
            native_ops, "_loaded", {} if native else {cpu_attention.DECODE_ATTENTION.name: False}
        )
        runner = ModelRunner(model, num_blocks=16, block_size=4, kv_layout="rows", max_rows=3)
        assert runner.native_decode is native
        prompts = [[1, 2, 3, 4, 5], [6, 7], [8, 9, 10]]
        for row, ids in enumerate(prompts):
            runner.forward([Chunk(ids, 0, list(range(row * 5, row * 5 + 5)), "none", row=row)])
        step = [
            Chunk([11 + row], len(ids), list(range(row * 5, row * 5 + 5)), row=row)
            for row, ids in enumerate(prompts)
        ]
        outs[native] = torch.stack(runner.forward(step))  # type: ignore[arg-type]
    torch.testing.assert_close(outs[True], outs[False], atol=1e-5, rtol=1e-5)
    int8 = ModelRunner(
        model, num_blocks=16, block_size=4, kv_layout="rows", max_rows=3, kv_cache_dtype="int8"
    )
    assert not int8.native_decode  # an 8-bit row cache is read by the dequantising path
