import pytest
import torch

from services.inference_gateway.core.attention import (
    causal_mask,
    paged_decode,
    paged_decode_torch,
    prefill_attention,
    reference_attention,
    row_decode,
    row_prefill,
)
from services.inference_gateway.core.kv_cache import BlockAllocator, OutOfBlocks, chain_hash
from services.inference_gateway.core.row_cache import RowCache


def _hashes(tokens: list[int], bs: int) -> list[int]:
    out, parent = [], None
    for i in range(0, len(tokens) - len(tokens) % bs, bs):
        parent = chain_hash(parent, tokens[i : i + bs])
        out.append(parent)
    return out


def test_allocator_refcounts_prefix_reuse_and_eviction() -> None:
    a = BlockAllocator(4, 2)
    tokens = [1, 2, 3, 4, 5]
    table = [a.allocate() for _ in range(3)]
    for bid, h in zip(table, _hashes(tokens, 2), strict=False):
        a.register(bid, h)
    # a second sequence with the same prefix shares the two full blocks while the first still runs
    shared, hashes = a.match_prefix(tokens, len(tokens) - 1)
    assert shared == table[:2] and hashes == _hashes(tokens, 2)
    assert a.free_blocks == 1
    # a different second block only matches the first
    assert a.match_prefix([1, 2, 9, 9, 9], 4)[0] == table[:1]
    a.free(table[:1])
    a.free(shared)
    a.free(table)
    assert a.free_blocks == 4
    # freed blocks keep their content: the prefix is found again after the owners are gone
    again, _ = a.match_prefix(tokens, 4)
    assert again == table[:2]
    a.free(again)
    # the unhashed block is handed out first; then cached blocks are evicted, oldest free first
    assert a.allocate() == table[2]
    rest = [a.allocate() for _ in range(3)]
    assert set(rest) == {table[0], table[1], 3}
    with pytest.raises(OutOfBlocks):
        a.allocate()
    assert a.match_prefix(tokens, 4)[0] == []  # evicted


def _scatter(
    kv: torch.Tensor, bs: int, num_blocks: int, gen: torch.Generator
) -> tuple[torch.Tensor, list[int]]:
    """Write contiguous ``kv [T, H, D]`` into random blocks of a paged cache; return the cache and table."""
    n = -(-kv.shape[0] // bs)
    table = torch.randperm(num_blocks, generator=gen)[:n].tolist()
    cache = torch.randn(num_blocks * bs, *kv.shape[1:], generator=gen)  # garbage everywhere else
    for p in range(kv.shape[0]):
        cache[table[p // bs] * bs + p % bs] = kv[p]
    return cache, table


@pytest.mark.parametrize("hq,hkv", [(4, 4), (8, 2)])
def test_paged_decode_matches_reference(hq: int, hkv: int) -> None:
    gen = torch.Generator().manual_seed(0)
    bs, d, lens = 4, 16, [1, 7, 13, 4]
    ks, vs, tables, qs = [], [], [], []
    k_cache = torch.randn(64 * bs, hkv, d, generator=gen)
    v_cache = torch.randn(64 * bs, hkv, d, generator=gen)
    free = torch.randperm(64, generator=gen).tolist()
    for n in lens:
        k, v = torch.randn(n, hkv, d, generator=gen), torch.randn(n, hkv, d, generator=gen)
        table = [free.pop() for _ in range(-(-n // bs))]
        for p in range(n):
            k_cache[table[p // bs] * bs + p % bs] = k[p]
            v_cache[table[p // bs] * bs + p % bs] = v[p]
        ks.append(k), vs.append(v), tables.append(table), qs.append(torch.randn(hq, d, generator=gen))
    width = max(len(t) for t in tables)
    bt = torch.tensor([t + [0] * (width - len(t)) for t in tables])
    q = torch.stack(qs)
    out = paged_decode(q, k_cache, v_cache, bt, torch.tensor(lens), bs, d**-0.5)
    for i in range(len(lens)):
        ref = reference_attention(q[i : i + 1], ks[i], vs[i], d**-0.5)[0]
        torch.testing.assert_close(out[i], ref, rtol=1e-5, atol=1e-5)


def test_prefill_chunk_over_cached_prefix_matches_causal_reference() -> None:
    gen = torch.Generator().manual_seed(1)
    bs, hq, hkv, d, t, start = 4, 4, 2, 8, 11, 6
    k, v = torch.randn(t, hkv, d, generator=gen), torch.randn(t, hkv, d, generator=gen)
    k_cache, table = _scatter(k, bs, 16, gen)
    v_cache = torch.randn_like(k_cache)
    for p in range(t):
        v_cache[table[p // bs] * bs + p % bs] = v[p]
    q = torch.randn(t - start, hq, d, generator=gen)
    slots = torch.tensor([table[p // bs] * bs + p % bs for p in range(t)])
    out = prefill_attention(q, k_cache, v_cache, slots, start, d**-0.5)
    ref = reference_attention(q, k, v, d**-0.5, causal_offset=start)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.cuda
def test_triton_kernel_matches_torch_path() -> None:
    pytest.importorskip("triton", reason="triton is not installed")
    from services.inference_gateway.core.triton_attention import paged_decode_triton

    gen = torch.Generator().manual_seed(2)
    bs, b, hq, hkv, d = 16, 5, 8, 2, 64
    k_cache = torch.randn(40 * bs, hkv, d, generator=gen).cuda()
    v_cache = torch.randn(40 * bs, hkv, d, generator=gen).cuda()
    bt = torch.randperm(40, generator=gen)[: b * 6].view(b, 6).cuda()
    lens = torch.tensor([1, 17, 50, 96, 33]).cuda()
    q = torch.randn(b, hq, d, generator=gen).cuda()
    want = paged_decode_torch(q, k_cache, v_cache, bt, lens, bs, d**-0.5)
    got = paged_decode_triton(q, k_cache, v_cache, bt, lens, bs, d**-0.5)
    torch.testing.assert_close(got, want, rtol=2e-4, atol=2e-4)


def test_row_decode_over_row_views_matches_reference() -> None:
    # rows 0 and 2 decode, row 1 is a hole (a prefilling or free row): its output is thrown away
    gen = torch.Generator().manual_seed(3)
    hq, hkv, d, cap, lens = 8, 2, 16, 32, {0: 5, 2: 19}
    k_rows = torch.randn(3, hkv, cap, d, generator=gen)
    v_rows = torch.randn(3, hkv, cap, d, generator=gen)
    width = max(lens.values())
    live = torch.tensor([[p < lens.get(r, 1) for p in range(width)] for r in range(3)])
    bias = torch.zeros(live.shape).masked_fill(~live, float("-inf"))[:, None, None]
    q = torch.randn(3, hq, d, generator=gen)
    out = row_decode(q, k_rows[:, :, :width], v_rows[:, :, :width], bias, d**-0.5)
    for r, n in lens.items():
        ref = reference_attention(
            q[r : r + 1], k_rows[r, :, :n].transpose(0, 1), v_rows[r, :, :n].transpose(0, 1), d**-0.5
        )
        torch.testing.assert_close(out[r], ref[0], rtol=1e-5, atol=1e-5)
    assert torch.isfinite(out[1]).all()


@pytest.mark.parametrize("start", [0, 6])
def test_row_prefill_matches_causal_reference(start: int) -> None:
    gen = torch.Generator().manual_seed(4)
    hq, hkv, d, t = 4, 2, 8, 11
    k, v = torch.randn(hkv, t, d, generator=gen), torch.randn(hkv, t, d, generator=gen)
    q = torch.randn(t - start, hq, d, generator=gen)
    mask = causal_mask(start, t - start, torch.device("cpu")) if start else None
    out = row_prefill(q, k, v, mask, d**-0.5)
    ref = reference_attention(q, k.transpose(0, 1), v.transpose(0, 1), d**-0.5, causal_offset=start)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_row_cache_rows_writes_and_growth() -> None:
    rc = RowCache(layers=1, rows=2, kv_heads=1, head_dim=2, max_len=10, dtype=torch.float32, initial=4)
    a, b = rc.acquire(), rc.acquire()
    assert (a, b) == (0, 1)
    with pytest.raises(RuntimeError, match="rows are taken"):
        rc.acquire()
    k = torch.arange(6.0).view(3, 1, 2)
    rc.write(0, torch.tensor([a, a, b]), torch.tensor([0, 3, 2]), k, -k)
    rc.reserve(7)  # doubles to 8, keeping what was written
    assert rc.capacity == 8 and rc.k[0].shape == (2, 1, 8, 2)
    assert rc.k[0][a, 0, 3].tolist() == [2.0, 3.0] and rc.v[0][b, 0, 2].tolist() == [-4.0, -5.0]
    rc.reserve(10)
    assert rc.capacity == 10  # capped at the row length
    with pytest.raises(ValueError, match="exceed the row length"):
        rc.reserve(11)
    rc.release(a)
    assert rc.acquire() == a and rc.filled[a] == 0
