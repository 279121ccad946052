"""puyu's CPU kernels against independent references: decode attention against plain attention in
float64 (``reference_attention``), the fused norms and rotary embedding against transformers' modules."""

import pytest
import torch

from services.inference_gateway.core import cpu_attention, cpu_fused
from services.inference_gateway.core.attention import reference_attention
from services.inference_gateway.core.kv_cache import quantize, resolve_kv_cache_dtype
from services.inference_gateway.core.row_cache import RowCache
from shared import native_ops

needs_attention_kernel = pytest.mark.skipif(
    not cpu_attention.usable(torch.float32, 4, 4),
    reason="puyu's decode-attention kernel needs AVX2 (or AVX-512) and a C++ compiler (it did not load here)",
)
needs_layer_ops = pytest.mark.skipif(
    not native_ops.load(cpu_fused.LAYER_OPS),
    reason="puyu's fused layer ops need AVX2/FMA and a C++ compiler (they did not load here)",
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


def assert_rows_attend(
    out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    lens: torch.Tensor,
    scale: float,
    atol_factor: float,
) -> None:
    """Each row of ``out`` is plain attention (float64) of ``q[r]`` over the first ``lens[r]`` positions
    of ``k[r], v[r]`` ``[Hkv, C, D]``; a row with no positions is zero."""
    assert out.dtype == q.dtype and out.shape == q.shape
    # fp32: float rounding only; bf16: the output's one rounding (the kernel computes in fp32)
    tol = 1e-5 if q.dtype == torch.float32 else 8e-3
    for r in range(len(lens)):
        n = int(lens[r])
        if n == 0:
            assert torch.count_nonzero(out[r]) == 0
            continue
        ref = reference_attention(
            q[r][None].double(),
            k[r, :, :n].transpose(0, 1).double(),
            v[r, :, :n].transpose(0, 1).double(),
            scale,
        )
        torch.testing.assert_close(out[r].double(), ref[0], atol=tol * atol_factor, rtol=tol)


@needs_attention_kernel
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
    assert_rows_attend(out, q, cache.k[0], cache.v[0], lens, scale, atol_factor=1)


def _quantized_rows(
    rows: int, kv_heads: int, head_dim: int, capacity: int, kv: str
) -> tuple[RowCache, torch.Tensor, torch.Tensor]:
    """A row cache of 8-bit keys and values (as the engine writes them) and their values in float64,
    dequantised here from the stored elements and scales (torch's own float8 conversion for fp8)."""
    spec = resolve_kv_cache_dtype(kv, torch.bfloat16)
    cache = RowCache(
        layers=1,
        rows=rows,
        kv_heads=kv_heads,
        head_dim=head_dim,
        max_len=capacity,
        dtype=torch.bfloat16,
        initial=capacity,
        kv_dtype=spec,
    )
    g = torch.Generator().manual_seed(0)
    exact = []
    for store, scales in ((cache.k, cache.k_scale), (cache.v, cache.v_scale)):
        assert scales is not None
        x = torch.randn(rows, kv_heads, capacity, head_dim, generator=g) * 3
        stored, scale = quantize(x, spec)
        store[0].copy_(stored)
        scales[0].copy_(scale)
        values = stored.view(torch.float8_e4m3fn) if kv == "fp8" else stored
        exact.append(values.double() * scale.double().unsqueeze(-1))
    return cache, exact[0], exact[1]


@needs_attention_kernel
@pytest.mark.parametrize("kv", ["int8", "fp8"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("q_heads", "kv_heads", "head_dim"), [(4, 4, 16), (12, 4, 64), (16, 2, 80)])
def test_decode_kernel_reads_8bit_rows_with_their_scales(
    kv: str, dtype: torch.dtype, q_heads: int, kv_heads: int, head_dim: int
) -> None:
    rows, capacity = 5, 70
    cache, k, v = _quantized_rows(rows, kv_heads, head_dim, capacity, kv)
    assert cpu_attention.usable(dtype, q_heads, kv_heads, cache.spec.storage)
    q = torch.randn(rows, q_heads, head_dim, generator=torch.Generator().manual_seed(1)).to(dtype)
    lens = torch.tensor([1, 17, 70, 0, 33])
    scale = head_dim**-0.5
    out = cpu_attention.decode_rows(q, cache.key_storage(0), cache.v[0], lens, scale, *cache.scales(0))
    assert_rows_attend(out, q, k, v, lens, scale, atol_factor=3)


@needs_attention_kernel
def test_decode_kernel_reads_every_fp8_value_exactly() -> None:
    # one live position: the probability is 1, so the output is that position's value row, which
    # holds every e4m3 bit pattern but NaN's (0x7f, 0xff), at scale 1: torch's float8 is the reference
    bits = torch.tensor([b for b in range(256) if b & 0x7F != 0x7F], dtype=torch.uint8)
    head_dim = len(bits)
    cache = RowCache(
        layers=1,
        rows=1,
        kv_heads=1,
        head_dim=head_dim,
        max_len=16,
        dtype=torch.float32,
        initial=16,
        kv_dtype=resolve_kv_cache_dtype("fp8", torch.float32),
    )
    assert cache.k_scale is not None and cache.v_scale is not None
    cache.v[0][0, 0, 0] = bits
    cache.k_scale[0].fill_(1.0)
    cache.v_scale[0].fill_(1.0)
    out = cpu_attention.decode_rows(
        torch.ones(1, 1, head_dim), cache.key_storage(0), cache.v[0], torch.tensor([1]), 1.0, *cache.scales(0)
    )
    torch.testing.assert_close(out[0, 0], bits.view(torch.float8_e4m3fn).float(), atol=0, rtol=0)


@needs_attention_kernel
def test_unsupported_layouts_are_refused_by_name() -> None:
    assert not cpu_attention.usable(torch.float16, 4, 4)
    assert not cpu_attention.usable(torch.float32, 18, 2)  # 9 query heads per group
    cache = _rows(2, 1, 16, 16, torch.float32)
    with pytest.raises(RuntimeError, match="query heads must be 1 to 8 times"):
        cpu_attention.decode_rows(
            torch.zeros(2, 9, 16), cache.key_storage(0), cache.v[0], torch.tensor([1, 1]), 1.0
        )


@needs_attention_kernel
@pytest.mark.parametrize("kv", ["auto", "int8", "fp8"])
def test_runner_takes_the_kernel_only_where_it_applies(kv: str, monkeypatch: pytest.MonkeyPatch) -> None:
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
        builds = (cpu_attention.DECODE_ATTENTION, cpu_attention.DECODE_ATTENTION_AVX2)
        monkeypatch.setattr(native_ops, "_loaded", {} if native else {op.name: False for op in builds})
        runner = ModelRunner(
            model, num_blocks=16, block_size=4, kv_layout="rows", max_rows=3, kv_cache_dtype=kv
        )
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
    half = ModelRunner(model.half(), num_blocks=16, block_size=4, kv_layout="rows", max_rows=3)
    assert not half.native_decode  # fp16 models keep the matmul path


@needs_layer_ops
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("norm_class", ["llama", "qwen3"])
def test_fused_norms_equal_transformers_rmsnorm(dtype: torch.dtype, norm_class: str) -> None:
    from transformers.models.llama.modeling_llama import LlamaRMSNorm
    from transformers.models.qwen3.modeling_qwen3 import Qwen3RMSNorm

    hidden = 200  # not a multiple of any vector width
    norm = (LlamaRMSNorm if norm_class == "llama" else Qwen3RMSNorm)(hidden, eps=1e-5)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.3 * torch.randn(hidden, generator=g))
    norm = norm.to(dtype)
    assert cpu_fused.fusable_norm(norm, dtype)
    x = (3 * torch.randn(7, hidden, generator=g)).to(dtype)
    delta = torch.randn(7, hidden, generator=g).to(dtype)
    exact = dtype == torch.bfloat16  # the kernel rounds where the module rounds: the same bf16 values
    tol = {"atol": 0, "rtol": 0} if exact else {"atol": 1e-5, "rtol": 1e-5}
    with torch.no_grad():
        torch.testing.assert_close(cpu_fused.rms_norm(norm, x), norm(x), **tol)
        total, normed = cpu_fused.add_rms_norm(norm, x, delta)
        torch.testing.assert_close(total, x + delta, atol=0, rtol=0)
        torch.testing.assert_close(normed, norm(x + delta), **tol)


@needs_layer_ops
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_rotary_equals_transformers(dtype: torch.dtype) -> None:
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    cfg = LlamaConfig(
        hidden_size=96, num_attention_heads=3, num_key_value_heads=1, max_position_embeddings=64
    )
    rope = LlamaRotaryEmbedding(cfg)
    g = torch.Generator().manual_seed(3)
    q = torch.randn(9, 3, 32, generator=g).to(dtype)
    k = torch.randn(9, 1, 32, generator=g).to(dtype)
    cos, sin = rope(q[None], torch.arange(20, 29)[None])
    cos, sin = cos[0], sin[0]
    q_ref, k_ref = apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1)
    q_out, k_out = cpu_fused.rotary(q, k, cos, sin)
    tol = {"atol": 0, "rtol": 0} if dtype == torch.bfloat16 else {"atol": 1e-6, "rtol": 1e-6}
    torch.testing.assert_close(q_out, q_ref, **tol)
    torch.testing.assert_close(k_out, k_ref, **tol)
