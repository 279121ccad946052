"""MinHash signatures and LSH banding, vectorised with numpy over batches of documents.

- Tokens: CJK characters one by one, other text as ``\\w+`` words, NFKC-casefolded; shingles
  are ``k``-grams of tokens (a text shorter than ``k`` is one shingle).
- Hashes are deterministic across processes (blake2b of each distinct token, memoised, never
  Python's ``hash``); a shingle's hash is a polynomial of its tokens' hashes, mixed to 32 bits.
- Permutations are multiply-shift hashes ``((a·x + b) mod 2⁶⁴) >> 32`` (Dietzfelbinger et al.,
  2-universal): no modulo, so a whole batch (permutations × every shingle of many documents) is
  three numpy operations, and each document's minimum is one ``minimum.reduceat``. Duplicate
  shingles need no removal: they cannot change a minimum.

Hand-written rather than datasketch because per-document Python objects and sha1 per shingle
are what makes datasketch slow (see benchmarks/bench_dedup_near.py).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable, Sequence

import numpy as np
import numpy.typing as npt

_TOKEN = re.compile(
    r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af]|[^\W_]+", re.UNICODE
)
_HAS_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")
_WORD = re.compile(r"[^\W_]+")
_MIX1, _MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_POLY = np.uint64(0x100000001B3)  # FNV prime: the base of the shingle polynomial
_SHIFT32 = np.uint64(32)
_BATCH_SHINGLES = 1 << 14  # shingles per (perm × shingle) block: ~15 MB, measured fastest
U64 = npt.NDArray[np.uint64]
U32 = npt.NDArray[np.uint32]


def fold(text: str) -> str:
    """NFKC + casefold: the form both exact keys and tokens are taken from."""
    if text.isascii():  # NFKC is the identity on ASCII and casefold is lower: skip the tables
        return text.lower()
    return unicodedata.normalize("NFKC", text).casefold()


def normalize_for_hash(text: str) -> str:
    """The text exact dedup compares: NFKC, casefolded, whitespace collapsed."""
    return " ".join(fold(text).split())


def exact_key(text: str) -> str:
    """The exact-dedup key of one text (batches use ``MinHasher.signatures_and_keys``)."""
    return _KEY_HASHER.signatures_and_keys([text], near=False)[1][0]


def tokens(text: str, folded: str | None = None) -> list[str]:
    t = folded if folded is not None else fold(text)
    # The CJK alternative slows every character down: only texts that have CJK pay for it.
    return _TOKEN.findall(t) if _HAS_CJK.search(t) else _WORD.findall(t)


def _splitmix(x: U64) -> U64:
    x = x ^ (x >> np.uint64(30))
    x = x * _MIX1
    x = x ^ (x >> np.uint64(27))
    x = x * _MIX2
    return x ^ (x >> np.uint64(31))


_CJK_RANGES = ((0x3040, 0x30FF), (0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xAC00, 0xD7AF), (0xF900, 0xFAFF))


def _char_tables() -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """(word character, CJK character) for every BMP code point: ``[^\\W_]`` and the CJK ranges above."""
    word = np.fromiter((chr(c).isalnum() for c in range(0x10000)), dtype=np.bool_, count=0x10000)
    cjk = np.zeros(0x10000, dtype=np.bool_)
    for lo, hi in _CJK_RANGES:
        cjk[lo : hi + 1] = True
    return word, cjk & word


_WORD_TABLE, _CJK_TABLE = _char_tables()


class MinHasher:
    def __init__(self, num_perm: int, shingle_size: int = 5, seed: int = 1) -> None:
        self.num_perm, self.k, self.seed = num_perm, shingle_size, seed
        rng = np.random.default_rng(seed)
        self.a = (rng.integers(0, 1 << 63, size=num_perm, dtype=np.uint64) << np.uint64(1)) | np.uint64(1)
        self.b = rng.integers(0, 1 << 63, size=num_perm, dtype=np.uint64) << np.uint64(1)
        # Token hashes do not depend on the seed (the permutations do): exact keys stay comparable.
        self._token_seed = np.uint64(int.from_bytes(blake("tokens", b"puyu-dedup"), "little"))
        self._pow = np.ones(1, dtype=np.uint64)

    def _powers(self, n: int) -> U64:
        if self._pow.size < n:
            with np.errstate(over="ignore"):
                size = max(n, 2 * self._pow.size)
                self._pow = np.concatenate(([1], np.cumprod(np.full(size - 1, _POLY, dtype=np.uint64))))
                self._pow = self._pow.astype(np.uint64)
        return self._pow

    def token_hashes(self, folded: Sequence[str]) -> tuple[U64, npt.NDArray[np.intp]]:
        """(64-bit hash of every token of every text, index of each text's first token + end).

        The whole batch is one code-point array: word characters by table lookup, a token starts
        at a word character after a non-word one and at every CJK character; a token's hash is a
        polynomial of its code points (one ``add.reduceat``), mixed and seeded.
        """
        joined = "\x00".join(folded) + "\x00"
        cps = np.frombuffer(joined.encode("utf-32-le"), dtype=np.uint32)
        if joined.isascii():
            word, cjk = _WORD_TABLE[cps], None
        else:
            bmp = np.minimum(cps, 0xFFFF)
            astral = cps > 0xFFFF  # outside the tables: only CJK extensions B-G are tokens there
            ext = astral & (cps >= 0x20000) & (cps < 0x32000)
            word = (_WORD_TABLE[bmp] & ~astral) | ext
            cjk = (_CJK_TABLE[bmp] & ~astral) | ext
        starts = word.copy()
        starts[1:] &= ~word[:-1]  # a word character after a non-word one
        if cjk is not None:
            starts |= cjk  # every CJK character is a token, and so is what follows one
            starts[1:] |= word[1:] & cjk[:-1]
        idx = np.flatnonzero(word)
        tok_starts = np.flatnonzero(starts[idx])  # token starts, in word-character positions
        n_tok = tok_starts.size
        doc_first = np.cumsum([0, *(len(t) + 1 for t in folded)])[:-1]  # char offset of each text
        if n_tok == 0:
            return np.zeros(0, np.uint64), np.zeros(len(folded) + 1, np.intp)
        tok_id = np.cumsum(starts[idx]) - 1
        rel = np.arange(idx.size) - tok_starts[tok_id]
        pw = self._powers(int(rel.max()) + 1)
        with np.errstate(over="ignore"):
            h = np.add.reduceat(cps[idx].astype(np.uint64) * pw[rel], tok_starts)
            h = _splitmix(h ^ self._token_seed)
        bounds = np.searchsorted(idx[tok_starts], np.append(doc_first, cps.size))
        return h, bounds

    def _shingle_batch(self, th: U64, bounds: npt.NDArray[np.intp]) -> tuple[U64, npt.NDArray[np.intp]]:
        """(32-bit shingle hashes as uint64, start of each text's shingles): every text has at least one."""
        n_docs = bounds.size - 1
        lengths = np.diff(bounds)
        k = self.k
        m = max(th.size - k + 1, 0)
        acc = np.zeros(m, dtype=np.uint64)
        with np.errstate(over="ignore"):
            for j in range(k):
                acc = acc * _POLY + th[j : j + m]
        pos = np.arange(m)
        doc_of = np.searchsorted(bounds, pos, side="right") - 1
        valid = pos + k <= bounds[np.minimum(doc_of + 1, n_docs)]
        sh, sh_doc = acc[valid], doc_of[valid]
        short = np.flatnonzero(lengths < k)  # texts shorter than k tokens: one shingle of them all
        if short.size:
            extra = np.zeros(short.size, dtype=np.uint64)
            with np.errstate(over="ignore"):
                for e, d in enumerate(short.tolist()):
                    for t in th[bounds[d] : bounds[d + 1]]:
                        extra[e] = extra[e] * _POLY + t
            sh = np.concatenate([sh, extra])
            sh_doc = np.concatenate([sh_doc, short])
            order = np.argsort(sh_doc, kind="stable")
            sh, sh_doc = sh[order], sh_doc[order]
        with np.errstate(over="ignore"):
            sh = _splitmix(sh) >> _SHIFT32
        return sh, np.searchsorted(sh_doc, np.arange(n_docs))

    def _min_hashes(self, shingles: U64, starts: npt.NDArray[np.intp]) -> U32:
        # The shift to 32 bits is monotone, so it is taken after the minimum, on (docs × perms)
        # values instead of (perms × shingles); the product is computed in place.
        with np.errstate(over="ignore"):
            h = np.multiply(self.a[:, None], shingles[None, :])
            h += self.b[:, None]
        return (np.minimum.reduceat(h, starts, axis=1).T >> _SHIFT32).astype(np.uint32)

    def signatures_and_keys(self, texts: Sequence[str], near: bool = True) -> tuple[U32, list[str]]:
        """(len(texts) × num_perm signatures, exact keys) of raw texts, in one vectorised batch.

        The exact key hashes the token sequence: NFKC, casefold, whitespace and punctuation do not
        count. With ``near`` False the signature matrix has no columns.
        """
        folded = [fold(t) for t in texts]
        th, bounds = self.token_hashes(folded)
        raw = th.tobytes()
        keys = [
            hashlib.blake2b(raw[8 * bounds[i] : 8 * bounds[i + 1]], digest_size=16).hexdigest()
            for i in range(len(texts))
        ]
        if not near:
            return np.zeros((len(texts), 0), np.uint32), keys
        sh, starts = self._shingle_batch(th, bounds)
        out = np.empty((len(texts), self.num_perm), dtype=np.uint32)
        ends = np.append(starts[1:], sh.size)
        first = 0
        while first < len(texts):  # doc groups of about _BATCH_SHINGLES shingles
            last = int(np.searchsorted(ends, starts[first] + _BATCH_SHINGLES, side="right"))
            last = max(last, first + 1)
            lo, hi = starts[first], ends[last - 1]
            out[first:last] = self._min_hashes(sh[lo:hi], starts[first:last] - lo)
            first = last
        return out, keys

    def signatures(self, texts: Sequence[str]) -> U32:
        return self.signatures_and_keys(texts)[0]

    def signature(self, text: str) -> U32:
        return self.signatures([text])[0]


def blake(tok: str, key: bytes) -> bytes:
    return hashlib.blake2b(tok.encode(), digest_size=8, key=key).digest()


def lsh_candidates(
    signatures: U32, bands: int, rows: int, max_bucket_pairs: int = 64
) -> set[tuple[int, int]]:
    """Pairs (i < j) of rows that share at least one band bucket.

    Within a bucket every pair is a candidate when the bucket is small; a large bucket pairs each
    member with its first members only (the union-find joins the rest transitively).
    """
    pairs: set[tuple[int, int]] = set()
    for members in bucket_groups(signatures, bands, rows):
        m = members.tolist()
        anchors = m if len(m) <= max_bucket_pairs else m[:2]
        for ai, i in enumerate(anchors):
            for j in m[ai + 1 :]:
                pairs.add((i, j) if i < j else (j, i))
    return pairs


def bucket_groups(
    signatures: U32, bands: int, rows: int, band_range: Iterable[int] | None = None
) -> list[np.ndarray]:
    """Row indices sharing a bucket, per band (groups of two or more), for ``band_range`` (all bands)."""
    groups: list[np.ndarray] = []
    if signatures.shape[0] < 2:
        return groups
    for band in band_range if band_range is not None else range(bands):
        block = np.ascontiguousarray(signatures[:, band * rows : (band + 1) * rows])
        keys = block.view(np.dtype((np.void, block.dtype.itemsize * rows))).ravel()
        _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
        shared = np.flatnonzero(counts[inverse] > 1)
        if shared.size == 0:
            continue
        order = shared[np.argsort(inverse[shared], kind="stable")]
        groups += np.split(order, np.flatnonzero(np.diff(inverse[order])) + 1)
    return groups


def estimated_jaccard(sig_a: U32, sig_b: U32) -> float:
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


_KEY_HASHER = MinHasher(1, 1, seed=0)
