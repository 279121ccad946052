"""MinHash signatures and LSH banding, vectorised with numpy.

- Tokens: CJK characters one by one, other text as ``\\w+`` words, casefolded; shingles are
  ``k``-grams of tokens (a text shorter than ``k`` is one shingle).
- Hashes are deterministic across processes (blake2b of each distinct token, never Python's
  ``hash``); a shingle's hash is a polynomial of its tokens' hashes, mixed and cut to 32 bits.
- Permutations are ``(a·x + b) mod p`` with ``p = 2³² − 5``: ``a·x + b`` fits in uint64, so the
  whole (permutations × shingles) matrix is one numpy expression.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

import numpy as np
import numpy.typing as npt

PRIME = np.uint64((1 << 32) - 5)
_TOKEN = re.compile(
    r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af]|[^\W_]+", re.UNICODE
)
_SPACE = re.compile(r"\s+")
_MIX1, _MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_POLY = np.uint64(0x100000001B3)  # FNV prime: the base of the shingle polynomial
U64 = npt.NDArray[np.uint64]


def normalize_for_hash(text: str) -> str:
    """The text exact dedup compares: NFKC, casefolded, whitespace collapsed."""
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def exact_key(text: str) -> str:
    return hashlib.blake2b(normalize_for_hash(text).encode(), digest_size=16).hexdigest()


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(unicodedata.normalize("NFKC", text).casefold())


def _splitmix(x: U64) -> U64:
    x = x ^ (x >> np.uint64(30))
    x = x * _MIX1
    x = x ^ (x >> np.uint64(27))
    x = x * _MIX2
    return x ^ (x >> np.uint64(31))


class MinHasher:
    def __init__(self, num_perm: int, shingle_size: int = 5, seed: int = 1) -> None:
        self.num_perm, self.k, self.seed = num_perm, shingle_size, seed
        rng = np.random.default_rng(seed)
        self.a = rng.integers(1, int(PRIME), size=num_perm, dtype=np.uint64)
        self.b = rng.integers(0, int(PRIME), size=num_perm, dtype=np.uint64)
        self._key = seed.to_bytes(8, "little", signed=True)
        self._token_hash: dict[str, int] = {}

    def _hash_token(self, tok: str) -> int:
        h = self._token_hash.get(tok)
        if h is None:
            h = int.from_bytes(hashlib.blake2b(tok.encode(), digest_size=8, key=self._key).digest(), "little")
            if len(self._token_hash) < 2_000_000:  # bounded memo: the vocabulary, not the corpus
                self._token_hash[tok] = h
        return h

    def shingles(self, text: str) -> U64:
        """Distinct 32-bit shingle hashes of ``text`` (as uint64 for the permutation arithmetic)."""
        toks = tokens(text)
        th = np.fromiter((self._hash_token(t) for t in toks), dtype=np.uint64, count=len(toks))
        if th.size == 0:
            th = np.zeros(1, dtype=np.uint64)
        k = min(self.k, th.size)
        n = th.size - k + 1
        acc = np.zeros(n, dtype=np.uint64)
        with np.errstate(over="ignore"):  # uint64 wrap-around is the intended modular arithmetic
            for j in range(k):
                acc = acc * _POLY + th[j : j + n]
            mixed = _splitmix(acc)
        return np.unique(mixed >> np.uint64(32))

    def signature(self, text: str) -> npt.NDArray[np.uint32]:
        x = self.shingles(text)
        # (num_perm, n_shingles) in one go; values < p < 2³² so the min fits uint32.
        h = (self.a[:, None] * x[None, :] + self.b[:, None]) % PRIME
        return h.min(axis=1).astype(np.uint32)


def lsh_candidates(
    signatures: npt.NDArray[np.uint32], bands: int, rows: int, max_bucket_pairs: int = 64
) -> set[tuple[int, int]]:
    """Pairs (i < j) of rows that share at least one band bucket.

    Within a bucket every pair is a candidate when the bucket is small; a large bucket pairs each
    member with its first members only (the union-find joins the rest transitively).
    """
    n = signatures.shape[0]
    pairs: set[tuple[int, int]] = set()
    if n < 2:
        return pairs
    for band in range(bands):
        block = np.ascontiguousarray(signatures[:, band * rows : (band + 1) * rows])
        keys = block.view(np.dtype((np.void, block.dtype.itemsize * rows))).ravel()
        _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
        shared = np.flatnonzero(counts[inverse] > 1)
        if shared.size == 0:
            continue
        order = shared[np.argsort(inverse[shared], kind="stable")]
        groups = np.split(order, np.flatnonzero(np.diff(inverse[order])) + 1)
        for members in groups:
            m = members.tolist()
            anchors = m if len(m) <= max_bucket_pairs else m[:2]
            for ai, i in enumerate(anchors):
                for j in m[ai + 1 :]:
                    pairs.add((i, j) if i < j else (j, i))
    return pairs


def estimated_jaccard(sig_a: npt.NDArray[np.uint32], sig_b: npt.NDArray[np.uint32]) -> float:
    return float(np.mean(sig_a == sig_b))


class UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, x: int) -> int:
        root = x
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[x] != root:  # path compression
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)
