"""MinHash signatures, vectorised with numpy over batches of documents.

- Tokens: CJK characters one by one, other text as ``\\w+`` words, NFKC-casefolded; shingles
  are ``k``-grams of tokens (a text shorter than ``k`` is one shingle).
- Hashes are deterministic across processes (never Python's ``hash``): a token's hash is a
  polynomial of its code points mixed with a seed; a shingle's hash is a polynomial of its
  tokens' hashes, mixed to 32 bits.
- Permutations are multiply-shift hashes ``((a·(x + c)) mod 2⁶⁴) >> 32`` (Dietzfelbinger et al.),
  ``a`` odd and random per permutation, ``c`` one random offset added to every 32-bit shingle
  hash ``x`` beforehand (``a·c`` plays the part of multiply-add-shift's ``b``; the estimator's
  bias and variance match it and the binomial ideal on random sets). No modulo, so a whole batch
  (permutations × every shingle of many documents) is one multiplication into a reused block,
  and each document's minimum is one ``minimum.reduceat``. Duplicate shingles need no removal:
  they cannot change a minimum.

Hand-written rather than datasketch because per-document Python objects and sha1 per shingle
are what makes datasketch slow (see benchmarks/bench_dedup_near.py). LSH banding and clustering
are in ``lsh.py``.
"""

from __future__ import annotations

import functools
import hashlib
import re
import threading
import unicodedata
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

_TOKEN = re.compile(
    r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af]|[^\W_]+", re.UNICODE
)
_HAS_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")
_WORD = re.compile(r"[^\W_]+")
_MIX1, _MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_POLY_INT = 0x100000001B3  # FNV prime: the base of the token and shingle polynomials
_POLY = np.uint64(_POLY_INT)
_POLY_INV = np.uint64(pow(_POLY_INT, -1, 1 << 64))  # odd, so invertible mod 2^64
_SHIFT32 = np.uint64(32)
# Signatures and exact keys of another version are not comparable (a persisted index records it).
# 2: token polynomials with exact uint64 powers (1 rounded them through float64, which also made
# them depend on the platform's float-to-integer conversion), permutations a·(x + c).
MINHASH_VERSION = 2
_BATCH_SHINGLES = 1 << 14  # shingles per (perm × shingle) block: ~15 MB, measured fastest
U64 = npt.NDArray[np.uint64]
U32 = npt.NDArray[np.uint32]


def fold(text: str) -> str:
    """NFKC + casefold: the form both exact keys and tokens are taken from."""
    if text.isascii():  # NFKC is the identity on ASCII and casefold is lower: skip the tables
        return text.lower()
    if unicodedata.is_normalized("NFKC", text):  # a quick check, far cheaper than normalising
        return text.casefold()
    return unicodedata.normalize("NFKC", text).casefold()


_SINGLE_MAP: npt.NDArray[np.uint32] | None = None


def _single_map() -> npt.NDArray[np.uint32]:
    """BMP code point → its full compatibility decomposition, where that is one character.

    Replacing such characters (full-width forms, CJK compatibility ideographs, ...) leaves the
    NFKD of any text unchanged, hence its NFKC too; what is left is most often already NFKC.
    """
    global _SINGLE_MAP
    if _SINGLE_MAP is None:
        cps = [c for c in range(0x80, 0x10000) if not 0xD800 <= c < 0xE000]  # no surrogates
        # One call for every character: NUL is a starter nothing combines with, so the joined
        # string decomposes exactly character by character.
        parts = unicodedata.normalize("NFKD", "\x00".join(map(chr, cps))).split("\x00")
        table = np.arange(0x10000, dtype=np.uint32)
        for cp, d in zip(cps, parts, strict=True):
            if len(d) == 1 and ord(d) != cp:  # a full decomposition is its own decomposition
                table[cp] = ord(d)
        _SINGLE_MAP = table
    return _SINGLE_MAP


def fold_batch(texts: Sequence[str]) -> list[str]:
    """``[fold(t) for t in texts]``, with the single-character NFKC mappings done as one array lookup."""
    out = [t.lower() if t.isascii() else "" for t in texts]
    rest = [i for i, t in enumerate(texts) if not t.isascii()]
    if not rest:
        return out
    joined = "\x00".join(texts[i] for i in rest)
    if joined.count("\x00") != len(rest) - 1:  # a text with NUL in it: no safe separator
        for i in rest:
            out[i] = fold(texts[i])
        return out
    cps = np.frombuffer(joined.encode("utf-32-le"), dtype=np.uint32)
    bmp = cps < 0x10000
    mapped = np.where(bmp, _single_map()[np.where(bmp, cps, 0)], cps)
    for i, t in zip(rest, mapped.tobytes().decode("utf-32-le").split("\x00"), strict=True):
        out[i] = t.casefold() if unicodedata.is_normalized("NFKC", t) else fold(t)
    return out


def tokens(text: str, folded: str | None = None) -> list[str]:
    t = folded if folded is not None else fold(text)
    # The CJK alternative slows every character down: only texts that have CJK pay for it.
    return _TOKEN.findall(t) if _HAS_CJK.search(t) else _WORD.findall(t)


def _splitmix(x: U64) -> U64:
    """SplitMix64's finaliser, in place on ``x`` (one scratch array instead of one per step)."""
    t = x >> np.uint64(30)
    x ^= t
    x *= _MIX1
    np.right_shift(x, np.uint64(27), out=t)
    x ^= t
    x *= _MIX2
    np.right_shift(x, np.uint64(31), out=t)
    x ^= t
    return x


_CJK_RANGES = ((0x3040, 0x30FF), (0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xAC00, 0xD7AF), (0xF900, 0xFAFF))


def _char_tables() -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """(word character, CJK character) for every BMP code point: ``[^\\W_]`` and the CJK ranges above."""
    word = np.fromiter((chr(c).isalnum() for c in range(0x10000)), dtype=np.bool_, count=0x10000)
    cjk = np.zeros(0x10000, dtype=np.bool_)
    for lo, hi in _CJK_RANGES:
        cjk[lo : hi + 1] = True
    return word, cjk & word


_WORD_TABLE, _CJK_TABLE = _char_tables()
_CLASS_TABLE = _WORD_TABLE.astype(np.uint8) | (_CJK_TABLE.astype(np.uint8) << 1)  # bit 0 word, 1 CJK


_POWERS = (np.ones(1, dtype=np.uint64), np.ones(1, dtype=np.uint64))


def _powers(n: int) -> tuple[U64, U64]:
    """(P^i, P^-i) mod 2^64 for i < at least n; grown by doubling and shared by every hasher
    (replaced whole, never changed in place: a thread holding the old pair still reads it safely)."""
    global _POWERS
    pw, inv = _POWERS
    while pw.size < n:  # doubling: [P^0..P^(m-1)] then the same times P^m
        with np.errstate(over="ignore"):
            pw = np.concatenate((pw, pw * (pw[-1] * _POLY)))
            inv = np.concatenate((inv, inv * (inv[-1] * _POLY_INV)))
        _POWERS = pw, inv
    return pw, inv


@functools.lru_cache(maxsize=16)
def hasher(num_perm: int, shingle_size: int = 5, seed: int = 1) -> MinHasher:
    """A shared hasher per parameter set (its buffers are per thread)."""
    return MinHasher(num_perm, shingle_size, seed)


class MinHasher:
    def __init__(self, num_perm: int, shingle_size: int = 5, seed: int = 1) -> None:
        self.num_perm, self.k, self.seed = num_perm, shingle_size, seed
        rng = np.random.default_rng(seed)
        self.a = (rng.integers(0, 1 << 63, size=num_perm, dtype=np.uint64) << np.uint64(1)) | np.uint64(1)
        # One offset for all permutations: a·(x + c) = a·x + a·c, so each permutation gets its own
        # additive constant without an add over (perms × shingles); x + c is never 0.
        self.c = np.uint64(int(rng.integers(1 << 32, 1 << 62)))
        # Token hashes do not depend on the seed (the permutations do): exact keys stay comparable.
        self._token_seed = np.uint64(int.from_bytes(blake("tokens", b"puyu-dedup"), "little"))
        self._local = threading.local()  # the (perm × shingle) block, reused per thread

    def _block(self, n: int) -> U64:
        """A reused (perm × n) buffer: a fresh 15 MB array per batch costs page faults."""
        buf: U64 | None = getattr(self._local, "buf", None)
        if buf is None or buf.shape[1] < n:
            buf = self._local.buf = np.empty((self.num_perm, max(n, _BATCH_SHINGLES)), dtype=np.uint64)
        return buf[:, :n]

    def token_hashes(self, folded: Sequence[str]) -> tuple[U64, npt.NDArray[np.intp]]:
        """(64-bit hash of every token of every text, index of each text's first token + end).

        The whole batch is one code-point array: word characters by table lookup, a token starts
        at a word character after a non-word one and at every CJK character. A token's hash is
        the polynomial ``Σ c_i·P^i`` of its code points (i from 0 in the token): with every
        non-word character zeroed, ``Σ c_j·P^j`` over absolute positions j, summed from one token
        start to the next by one ``add.reduceat`` and shifted back by ``P^-start``, is exactly that.
        """
        joined = "\x00".join(folded) + "\x00"
        cps: npt.NDArray[np.uint8] | npt.NDArray[np.uint16] | npt.NDArray[np.uint32]
        if joined.isascii():
            cps = np.frombuffer(joined.encode("ascii"), dtype=np.uint8)
            word, cjk = _WORD_TABLE[cps], None
        elif len(wide := joined.encode("utf-16-le")) == 2 * len(joined):  # no astral characters
            cps = np.frombuffer(wide, dtype=np.uint16)
            cls = _CLASS_TABLE[cps]  # one lookup for both tables
            word, cjk = (cls & 1).view(np.bool_), (cls >> 1).view(np.bool_)
        else:
            cps = np.frombuffer(joined.encode("utf-32-le"), dtype=np.uint32)
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
        pos = np.flatnonzero(starts)  # token starts, as character positions
        doc_first = np.cumsum([0, *(len(t) + 1 for t in folded)])[:-1]  # char offset of each text
        if pos.size == 0:
            return np.zeros(0, np.uint64), np.zeros(len(folded) + 1, np.intp)
        pw, inv = _powers(cps.size)
        with np.errstate(over="ignore"):
            v = (cps * word).astype(np.uint64)  # non-word characters count as 0
            v *= pw[: cps.size]
            h = np.add.reduceat(v, pos)
            h *= inv[pos]
            h ^= self._token_seed
            h = _splitmix(h)
        bounds = np.searchsorted(pos, np.append(doc_first, cps.size))
        return h, bounds

    def _shingle_batch(self, th: U64, bounds: npt.NDArray[np.intp]) -> tuple[U64, npt.NDArray[np.intp]]:
        """(32-bit shingle hashes as uint64, start of each text's shingles): every text has at least one."""
        lengths = np.diff(bounds)
        k = self.k
        m = max(th.size - k + 1, 0)
        acc = np.zeros(m, dtype=np.uint64)
        with np.errstate(over="ignore"):
            for j in range(k):  # in place: no new 8-byte array per step
                acc *= _POLY
                acc += th[j : j + m]
        # A window is a shingle when it ends inside its text: its position in the text <= length - k.
        in_doc = np.arange(th.size) - np.repeat(bounds[:-1], lengths)
        valid = (in_doc <= np.repeat(lengths - k, lengths))[:m]
        counts = np.where(lengths >= k, lengths - k + 1, 1)
        first = np.concatenate(([0], np.cumsum(counts)[:-1]))
        short = np.flatnonzero(lengths < k)  # texts shorter than k tokens: one shingle of them all
        if short.size:
            sh = np.empty(int(counts.sum()), dtype=np.uint64)
            slot = np.zeros(sh.size, dtype=np.bool_)
            slot[first[short]] = True
            sh[~slot] = acc[valid]
            extra = np.zeros(short.size, dtype=np.uint64)
            with np.errstate(over="ignore"):
                for e, d in enumerate(short.tolist()):
                    for t in th[bounds[d] : bounds[d + 1]]:
                        extra[e] = extra[e] * _POLY + t
            sh[slot] = extra
        else:
            sh = acc[valid]
        with np.errstate(over="ignore"):
            sh = _splitmix(sh)
            sh >>= _SHIFT32
            sh += self.c  # the permutations' offset (see __init__)
        return sh, first

    def _min_hashes(self, shingles: U64, starts: npt.NDArray[np.intp]) -> U32:
        # The shift to 32 bits is monotone, so it is taken after the minimum, on (docs × perms)
        # values instead of (perms × shingles); the product is computed in place in a reused block.
        h = self._block(shingles.size)
        with np.errstate(over="ignore"):
            np.multiply(self.a[:, None], shingles[None, :], out=h)
        return (np.minimum.reduceat(h, starts, axis=1).T >> _SHIFT32).astype(np.uint32)

    def signatures_and_keys(self, texts: Sequence[str], near: bool = True) -> tuple[U32, list[str]]:
        """(len(texts) × num_perm signatures, exact keys) of raw texts, in one vectorised batch.

        The exact key hashes the token sequence: NFKC, casefold, whitespace and punctuation do not
        count. With ``near`` False the signature matrix has no columns.
        """
        folded = fold_batch(texts)
        th, bounds = self.token_hashes(folded)
        raw = th.tobytes()
        b8 = (8 * bounds).tolist()
        keys = [
            hashlib.blake2b(raw[b8[i] : b8[i + 1]], digest_size=16).hexdigest() for i in range(len(texts))
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
