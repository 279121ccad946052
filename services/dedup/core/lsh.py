"""LSH banding, candidate verification and connected components, all as array operations.

A band range's result (``BandPairs``) depends only on the signatures and the bands it covers, and
the union of the results of disjoint band ranges is the result of all bands: that is what lets the
distributed path give each band range to another worker and still agree with one process.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

I64 = npt.NDArray[np.int64]
U32 = npt.NDArray[np.uint32]
MAX_BUCKET_PAIRS = 64  # a larger bucket pairs its members with its first two only (the star)
_VERIFY_CHUNK = 1 << 14  # pairs compared at once: bounds the (pairs × width) temporaries


def _band_order(block: U32) -> tuple[I64, npt.NDArray[np.bool_]]:
    """(rows sorted by bucket, ascending row within a bucket; True where a new bucket starts)."""
    n, rows = block.shape
    with np.errstate(over="ignore"):  # a 64-bit fingerprint of each row's band: sorting it is fast
        fp = np.zeros(n, dtype=np.uint64)
        for r in range(rows):
            fp = (fp ^ block[:, r].astype(np.uint64)) * np.uint64(0x9E3779B97F4A7C15)
    order = np.argsort(fp, kind="stable")
    fs, bs = fp[order], block[order]
    new = np.ones(n, dtype=np.bool_)
    new[1:] = fs[1:] != fs[:-1]
    if not (bs[1:][~new[1:]] == bs[:-1][~new[1:]]).all():  # a fingerprint collision: exact sort
        keys = np.ascontiguousarray(block).view(np.dtype((np.void, 4 * rows))).ravel()
        _, inverse = np.unique(keys, return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        new[1:] = inverse[order][1:] != inverse[order][:-1]
    return order.astype(np.int64), new


def _bucket_pairs(order: I64, new: npt.NDArray[np.bool_], max_pairs: int) -> I64:
    """(pairs, 2) of rows sharing a bucket: every pair in a small bucket, the star in a large one."""
    bucket = np.cumsum(new) - 1
    size = np.bincount(bucket)[bucket]  # size of each sorted row's bucket
    shared = size > 1
    order, bucket, size = order[shared], bucket[shared], size[shared]
    out: list[I64] = []
    small = size <= max_pairs
    o_s, b_s = order[small], bucket[small]
    for d in range(1, int(size[small].max(initial=1))):
        same = np.flatnonzero(b_s[d:] == b_s[:-d])
        if same.size == 0:
            break
        out.append(np.stack([o_s[same], o_s[same + d]], axis=1))
    if not small.all():
        big_o, big_b = order[~small], bucket[~small]
        starts = np.flatnonzero(np.r_[True, big_b[1:] != big_b[:-1]])
        for s, e in zip(starts.tolist(), [*starts[1:].tolist(), big_o.size], strict=True):
            m = big_o[s:e]
            out.append(np.stack([np.full(m.size - 1, m[0]), m[1:]], axis=1))
            out.append(np.stack([np.full(m.size - 2, m[1]), m[2:]], axis=1))
    return np.concatenate(out) if out else np.zeros((0, 2), np.int64)


def candidate_pairs(signatures: U32, bands: int, rows: int, band_range: Iterable[int] | None = None) -> I64:
    """Unique (a < b) row pairs that share a bucket in at least one band of ``band_range`` (all bands).

    Rows are sorted within a bucket, so ``a < b`` for every pair; the pairs are sorted.
    """
    parts: list[I64] = []
    if signatures.shape[0] >= 2:
        for band in band_range if band_range is not None else range(bands):
            block = np.ascontiguousarray(signatures[:, band * rows : (band + 1) * rows])
            parts.append(_bucket_pairs(*_band_order(block), MAX_BUCKET_PAIRS))
    if not parts:
        return np.zeros((0, 2), np.int64)
    pairs = np.concatenate(parts)
    n = np.int64(signatures.shape[0])
    codes = np.unique(pairs[:, 0] * n + pairs[:, 1])
    return np.stack([codes // n, codes % n], axis=1)


def verify(signatures: U32, pairs: I64, threshold: float) -> npt.NDArray[np.bool_]:
    """Whether each pair's estimated Jaccard (share of equal signature values) reaches ``threshold``."""
    need = threshold * signatures.shape[1]
    ok = np.zeros(len(pairs), dtype=np.bool_)
    for s in range(0, len(pairs), _VERIFY_CHUNK):
        a, b = pairs[s : s + _VERIFY_CHUNK, 0], pairs[s : s + _VERIFY_CHUNK, 1]
        ok[s : s + _VERIFY_CHUNK] = np.count_nonzero(signatures[a] == signatures[b], axis=1) >= need
    return ok


@dataclass
class BandPairs:
    """Candidate pairs of one band range and which of them passed verification."""

    pairs: I64  # (m, 2), a < b, sorted
    verified: npt.NDArray[np.bool_]

    @classmethod
    def compute(
        cls, signatures: U32, bands: int, rows: int, threshold: float, band_range: Iterable[int] | None = None
    ) -> BandPairs:
        pairs = candidate_pairs(signatures, bands, rows, band_range)
        return cls(pairs, verify(signatures, pairs, threshold))

    def save(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            np.savez(f, pairs=self.pairs, verified=self.verified)
        os.replace(tmp, path)  # atomic: a reader sees the whole file or none

    @classmethod
    def load(cls, path: Path) -> BandPairs:
        with np.load(path) as z:
            return cls(z["pairs"].reshape(-1, 2).astype(np.int64), z["verified"].astype(np.bool_))

    @classmethod
    def merge(cls, parts: list[BandPairs]) -> BandPairs:
        """The union of several band ranges' results: a pair found in two ranges counts once."""
        if not parts:
            return cls(np.zeros((0, 2), np.int64), np.zeros(0, np.bool_))
        pairs = np.concatenate([p.pairs for p in parts])
        verified = np.concatenate([p.verified for p in parts])
        if pairs.size == 0:
            return cls(pairs.reshape(0, 2), verified)
        n = np.int64(pairs.max()) + 1
        _, first = np.unique(pairs[:, 0] * n + pairs[:, 1], return_index=True)
        return cls(pairs[first], verified[first])


def components(n: int, edges: I64) -> I64:
    """Label of every node: the smallest node of its connected component (edges: (m, 2)).

    Hook and compress: each round points every edge's larger root at its smaller one, then
    jumps pointers until each node points at a root; roots only ever point lower, so the
    smallest node of a component is its root.
    """
    parent = np.arange(n, dtype=np.int64)
    u, v = edges[:, 0], edges[:, 1]
    while True:
        pu, pv = parent[u], parent[v]
        differ = pu != pv
        if not differ.any():
            return parent
        u, v, pu, pv = u[differ], v[differ], pu[differ], pv[differ]
        np.minimum.at(parent, np.maximum(pu, pv), np.minimum(pu, pv))
        while True:
            grand = parent[parent]
            if (grand == parent).all():
                break
            parent = grand
