"""The blocked (paged) KV cache: fixed-size blocks, reference counts, and a prefix cache over full blocks.

A sequence owns a list of block ids (its block table); token ``i`` of it lives in slot
``table[i // block_size] * block_size + i % block_size`` of every layer's cache. A block that is
full gets a hash chained over every token before it, so two prompts that share a prefix of whole
blocks share those blocks (prefix caching, as vLLM's automatic prefix caching). A freed block keeps
its hash and content until it is handed out again: freed blocks are reused least recently freed
first, and blocks that hold no cached prefix are reused before any that do.

The cache stores keys and values in the model's dtype (``auto``) or in 8 bits (``int8``, ``fp8``:
torch.float8_e4m3fn), quantised on write and dequantised where attention reads them. The 8-bit
forms are symmetric with one scale per token and KV head, computed online from that head vector's
absolute maximum: LMDeploy's granularity (its int8 KV is online, per-head per-token, though
asymmetric), which needs no calibration data and never re-quantises a block when a later token is
larger; vLLM's per-head fp8 scales are instead static, calibrated offline per layer.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from services.inference_gateway.core.sampling import InvalidRequest

KV_CACHE_DTYPES = ("auto", "int8", "fp8")
# Scales take 2 bytes per (token, KV head): with head_dim 64 an int8 entry is 66 bytes against bf16's
# 128 (1.94x the tokens per byte; fp32 scales would give 1.88x). fp16's 11-bit mantissa is ample
# because values are quantised with the stored (rounded) scale, so dequantising is consistent.
SCALE_DTYPE = torch.float16
# A zero head vector still gets a positive scale (no 0/0); 2**-24 is fp16's smallest subnormal.
_MIN_SCALE, _MAX_SCALE = 2.0**-24, 65504.0
# fp8 values are kept as their uint8 bits: torch's CPU kernels cannot copy or index float8 tensors
# (index_copy_, advanced indexing), while uint8 ones move everywhere; they are viewed back to e4m3 to
# be dequantised (and by the Triton kernel).
FP8 = getattr(torch, "float8_e4m3fn", None)


@dataclass(frozen=True)
class KVCacheDtype:
    """How the cache stores keys and values: ``storage`` per element (uint8 holds fp8 e4m3 bits), plus
    a scale per (token, head) when ``qmax`` (the largest magnitude a quantised element holds) is set."""

    name: str  # auto | int8 | fp8
    storage: torch.dtype
    qmax: float | None = None

    @property
    def quantized(self) -> bool:
        return self.qmax is not None

    @property
    def label(self) -> str:
        """What a worker announces: int8, fp8_e4m3, or the model's dtype (bfloat16, float32 ...)."""
        if self.name == "fp8":
            return "fp8_e4m3"
        return self.name if self.quantized else str(self.storage).removeprefix("torch.")

    def bytes_per_head(self, head_dim: int) -> int:
        """Bytes one token's keys (or values) of one KV head take, its scale included."""
        scale = SCALE_DTYPE.itemsize if self.quantized else 0
        return head_dim * self.storage.itemsize + scale


def resolve_kv_cache_dtype(name: str, model_dtype: torch.dtype) -> KVCacheDtype:
    """The storage for ``--kv-cache-dtype`` ``name`` (auto: the model's dtype); InvalidRequest if unknown."""
    if name == "auto":
        return KVCacheDtype("auto", model_dtype)
    if name == "int8":
        return KVCacheDtype("int8", torch.int8, 127.0)
    if name == "fp8":
        fp8 = getattr(torch, "float8_e4m3fn", None)  # looked up now: tests take it away
        if fp8 is None:
            raise InvalidRequest(
                f"kv cache dtype fp8 needs torch.float8_e4m3fn, which torch {torch.__version__} lacks: "
                "use int8 or upgrade torch"
            )
        return KVCacheDtype("fp8", torch.uint8, float(torch.finfo(fp8).max))
    raise InvalidRequest(f"unknown kv cache dtype {name!r} (choose one of {', '.join(KV_CACHE_DTYPES)})")


def quantize(x: torch.Tensor, spec: KVCacheDtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``x [..., D]`` -> (``[..., D]`` in ``spec.storage``, a scale per vector ``[...]`` in SCALE_DTYPE)."""
    assert spec.qmax is not None
    amax = x.detach().abs().amax(-1).float()
    scale = (amax / spec.qmax).clamp(_MIN_SCALE, _MAX_SCALE).to(SCALE_DTYPE)
    y = (x.float() / scale.float().unsqueeze(-1)).clamp(-spec.qmax, spec.qmax)
    if spec.storage == torch.int8:
        return y.round().to(torch.int8), scale
    assert FP8 is not None
    return y.to(FP8).view(torch.uint8), scale  # rounds to the nearest e4m3 value


def dequantize(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``q [..., D] * scale [...]`` in ``dtype`` (what attention reads); uint8 ``q`` holds fp8 e4m3 bits."""
    if q.dtype == torch.uint8:
        assert FP8 is not None
        q = q.view(FP8)
    return q.to(dtype) * scale.to(dtype).unsqueeze(-1)


def kv_block_bytes(*, layers: int, kv_heads: int, head_dim: int, block_size: int, spec: KVCacheDtype) -> int:
    """Bytes one block takes over all layers: keys and values, their scales included."""
    return 2 * layers * block_size * kv_heads * spec.bytes_per_head(head_dim)


class OutOfBlocks(RuntimeError):
    """No free block is left: the scheduler preempts a sequence and tries again."""


@dataclass
class _Block:
    ref: int = 0
    hash: int | None = None


def chain_hash(parent: int | None, tokens: Sequence[int]) -> int:
    return hash((parent, tuple(tokens)))


class BlockAllocator:
    def __init__(self, num_blocks: int, block_size: int) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"need at least one block of at least one slot, got {num_blocks}×{block_size}")
        self.block_size = block_size
        self.num_blocks = num_blocks
        self._blocks = [_Block() for _ in range(num_blocks)]
        self._free: collections.OrderedDict[int, None] = collections.OrderedDict.fromkeys(range(num_blocks))
        self._by_hash: dict[int, int] = {}
        self.prefix_hits = 0  # tokens served from the prefix cache (metrics, tests)

    @property
    def free_blocks(self) -> int:
        return len(self._free)

    def allocate(self) -> int:
        if not self._free:
            raise OutOfBlocks("the KV cache has no free block")
        bid, _ = self._free.popitem(last=False)
        block = self._blocks[bid]
        if block.hash is not None:  # evict the cached prefix it held
            if self._by_hash.get(block.hash) == bid:
                del self._by_hash[block.hash]
            block.hash = None
        block.ref = 1
        return bid

    def free(self, table: Sequence[int]) -> None:
        # the tail of a table goes back first so that a prompt's first blocks stay cached longest
        for bid in reversed(table):
            block = self._blocks[bid]
            block.ref -= 1
            if block.ref == 0:
                self._free[bid] = None
                if block.hash is None:
                    self._free.move_to_end(bid, last=False)

    def match_prefix(self, tokens: Sequence[int], limit: int) -> tuple[list[int], list[int]]:
        """Reuse the cached blocks of ``tokens``' longest cached prefix of whole blocks, at most ``limit`` tokens.

        Returns (block ids, their hashes); each returned block now has one more reference.
        """
        bs, blocks, hashes = self.block_size, [], []
        parent: int | None = None
        for start in range(0, limit - limit % bs, bs):
            h = chain_hash(parent, tokens[start : start + bs])
            bid = self._by_hash.get(h)
            if bid is None:
                break
            block = self._blocks[bid]
            if block.ref == 0:
                self._free.pop(bid, None)
            block.ref += 1
            blocks.append(bid)
            hashes.append(h)
            parent = h
        self.prefix_hits += len(blocks) * bs
        return blocks, hashes

    def register(self, bid: int, h: int) -> None:
        """Make a full block findable by its chained hash (first writer wins)."""
        self._blocks[bid].hash = h
        self._by_hash.setdefault(h, bid)


class PagedKVCache:
    """Per-layer key and value tensors ``[num_blocks * block_size, kv_heads, head_dim]`` plus the allocator.

    ``dtype`` is what attention computes in (the model's); ``kv_dtype`` what the tensors store. A
    quantised cache also keeps per-layer scales ``[num_blocks * block_size, kv_heads]`` for keys and
    for values (``k_scale``, ``v_scale``; None when not quantised).
    """

    def __init__(
        self,
        *,
        layers: int,
        kv_heads: int,
        head_dim: int,
        num_blocks: int,
        block_size: int,
        dtype: torch.dtype,
        device: torch.device | str = "cpu",
        kv_dtype: KVCacheDtype | None = None,
    ) -> None:
        self.allocator = BlockAllocator(num_blocks, block_size)
        self.block_size = block_size
        self.dtype = dtype
        self.spec = kv_dtype or KVCacheDtype("auto", dtype)
        self.block_bytes = kv_block_bytes(
            layers=layers, kv_heads=kv_heads, head_dim=head_dim, block_size=block_size, spec=self.spec
        )
        shape = (num_blocks * block_size, kv_heads, head_dim)
        store = self.spec.storage
        self.k = [torch.zeros(shape, dtype=store, device=device) for _ in range(layers)]
        self.v = [torch.zeros(shape, dtype=store, device=device) for _ in range(layers)]
        self.k_scale: list[torch.Tensor] | None = None
        self.v_scale: list[torch.Tensor] | None = None
        if self.spec.quantized:
            self.k_scale = [torch.zeros(shape[:2], dtype=SCALE_DTYPE, device=device) for _ in range(layers)]
            self.v_scale = [torch.zeros(shape[:2], dtype=SCALE_DTYPE, device=device) for _ in range(layers)]

    @property
    def nbytes(self) -> int:
        """Bytes the cache's tensors hold (what ``block_bytes`` accounts for, per block)."""
        tensors = [*self.k, *self.v, *(self.k_scale or []), *(self.v_scale or [])]
        return sum(t.numel() * t.element_size() for t in tensors)

    def scales(self, layer: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The layer's key and value scales (None, None for a cache in the model's dtype)."""
        if self.k_scale is None or self.v_scale is None:
            return None, None
        return self.k_scale[layer], self.v_scale[layer]

    def write(
        self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Store ``k, v [T, kv_heads, head_dim]`` at ``slots``; returns them as stored (values, scales)."""
        ks = vs = None
        if self.spec.quantized:
            k, ks = quantize(k, self.spec)
            v, vs = quantize(v, self.spec)
            k_scale, v_scale = self.scales(layer)
            assert k_scale is not None and v_scale is not None
            k_scale.index_copy_(0, slots, ks)
            v_scale.index_copy_(0, slots, vs)
        self.k[layer].index_copy_(0, slots, k)
        self.v[layer].index_copy_(0, slots, v)
        return k, v, ks, vs

    def stored(
        self, layer: int, slots: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """The stored keys, values and scales at ``slots`` (copying them elsewhere needs no requantising)."""
        k_scale, v_scale = self.scales(layer)
        ks = None if k_scale is None else k_scale[slots]
        vs = None if v_scale is None else v_scale[slots]
        return self.k[layer][slots], self.v[layer][slots], ks, vs
