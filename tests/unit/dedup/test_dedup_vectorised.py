"""The vectorised MinHash and LSH against slow, obvious reference implementations."""

from __future__ import annotations

import json
import random
import unicodedata
from pathlib import Path

import numpy as np
import pytest

from contracts.events import DedupOptions
from services.dedup.core import DedupInputError, run_dedup
from services.dedup.core.lsh import MAX_BUCKET_PAIRS, BandPairs, candidate_pairs, components, verify
from services.dedup.core.minhash import _CJK_RANGES, MinHasher, _splitmix, fold, fold_batch

P, M = 0x100000001B3, 1 << 64
TRICKY = [
    "ＡＢＣ，ｄｅｆ！全角\u3000空格",  # full-width forms and the ideographic space
    "e\u0301te\u0301 café",  # combining accents compose under NFKC
    "\u1e9b\u0323 ﬁ ﬂ ß Σς",  # ligatures and case folding that expand
    "𠀀𠀁 ok 𝐀𝐁",  # astral: CJK extension B, mathematical bold
    "①② ｶﾞｷﾞ \uf900\uf901 한국어",
    "",
    "a_b x",
]


def test_fold_batch_is_nfkc_casefold() -> None:
    rng = random.Random(1)
    pool = [chr(c) for c in range(0x20, 0x3000) if not 0xD800 <= c < 0xE000]
    pool += [chr(c) for c in range(0xFF00, 0xFFF0)] + ["\u0301", "\u0308", " "]
    texts = TRICKY + ["".join(rng.choice(pool) for _ in range(30)) for _ in range(300)]
    assert fold_batch(texts) == [unicodedata.normalize("NFKC", t).casefold() for t in texts]
    assert fold_batch(["x\x00y", "ＡＢ"]) == [fold("x\x00y"), "ab"]  # a NUL inside: one text at a time


def _reference_tokens(text: str) -> list[str]:
    """A token: a run of word characters, but every CJK character is a token of its own."""

    def cjk(c: str) -> bool:
        o = ord(c)
        return (c.isalnum() and any(lo <= o <= hi for lo, hi in _CJK_RANGES)) or 0x20000 <= o < 0x32000

    def word(c: str) -> bool:
        return (c.isalnum() and ord(c) < 0x10000) or 0x20000 <= ord(c) < 0x32000

    toks: list[str] = []
    cur, prev_cjk = "", False
    for c in text:
        if not word(c):
            toks += [cur] if cur else []
            cur, prev_cjk = "", False
        elif cjk(c) or prev_cjk or not cur:
            toks += [cur] if cur else []
            cur, prev_cjk = c, cjk(c)
        else:
            cur += c
    return toks + ([cur] if cur else [])


@pytest.mark.parametrize(
    "texts",
    [["plain ascii words", "", "more text here"], ["首都 Velm, 市场! ok", "ＡＢＣ café"], TRICKY],
    ids=["ascii", "bmp", "astral"],
)
def test_token_hashes_are_the_exact_polynomial(texts: list[str]) -> None:
    h = MinHasher(8, 5, seed=1)
    folded = fold_batch(texts)
    got, bounds = h.token_hashes(folded)
    toks = [_reference_tokens(t) for t in folded]
    assert np.diff(bounds).tolist() == [len(t) for t in toks]
    raw = [sum(ord(c) * pow(P, i, M) for i, c in enumerate(tok)) % M for ts in toks for tok in ts]
    want = _splitmix(np.array(raw, dtype=np.uint64) ^ h._token_seed)
    assert got.tolist() == want.tolist()


def _bucket_pairs_reference(sigs: np.ndarray, bands: int, rows: int) -> set[tuple[int, int]]:
    pairs: set[tuple[int, int]] = set()
    for band in range(bands):
        buckets: dict[bytes, list[int]] = {}
        for i, row in enumerate(sigs[:, band * rows : (band + 1) * rows]):
            buckets.setdefault(row.tobytes(), []).append(i)
        for m in buckets.values():
            anchors = m if len(m) <= MAX_BUCKET_PAIRS else m[:2]
            for ai, a in enumerate(anchors):
                pairs.update((a, b) for b in m[ai + 1 :])
    return pairs


def test_candidate_pairs_and_verification_match_a_loop() -> None:
    rng = np.random.default_rng(0)
    sigs = rng.integers(0, 4, size=(300, 12), dtype=np.uint32)  # tiny alphabet: many shared buckets
    sigs[200:290] = sigs[5]  # one bucket of 91 rows in every band: the star rule
    pairs = candidate_pairs(sigs, 6, 2)
    assert {tuple(p) for p in pairs.tolist()} == _bucket_pairs_reference(sigs, 6, 2)
    assert (pairs[:, 0] < pairs[:, 1]).all() and (np.diff(pairs[:, 0] * 300 + pairs[:, 1]) > 0).all()
    ok = verify(sigs, pairs, 0.5)
    assert ok.tolist() == [np.mean(sigs[a] == sigs[b]) >= 0.5 for a, b in pairs.tolist()]
    ranges = [BandPairs.compute(sigs, 6, 2, 0.5, range(lo, min(lo + 4, 6))) for lo in (0, 4)]
    merged, whole = BandPairs.merge(ranges), BandPairs.compute(sigs, 6, 2, 0.5)
    assert (merged.pairs == whole.pairs).all() and (merged.verified == whole.verified).all()


def test_components_match_union_find() -> None:
    rng = np.random.default_rng(1)
    n = 500
    edges = rng.integers(0, n, size=(350, 2))
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            x = parent[x]
        return x

    for a, b in edges.tolist():
        ra, rb = find(a), find(b)
        parent[max(ra, rb)] = min(ra, rb)
    assert components(n, edges).tolist() == [find(i) for i in range(n)]
    assert components(3, np.zeros((0, 2), np.int64)).tolist() == [0, 1, 2]


def test_index_of_an_older_hashing_version_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.jsonl").write_text(json.dumps({"id": "a", "text": "one two three four five six"}) + "\n")
    run_dedup([src], tmp_path / "old", "old")
    manifest = json.loads((tmp_path / "old" / "manifest.json").read_text())
    del manifest["index"]["signature_options"]["minhash_version"]  # as written before versioning
    (tmp_path / "old" / "manifest.json").write_text(json.dumps(manifest))
    opts = DedupOptions(against_indexes=[str(tmp_path / "old")])
    with pytest.raises(
        DedupInputError, match=r"'minhash_version': 1}, this run uses .*'minhash_version': 2}: not comparable"
    ):
        run_dedup([src], tmp_path / "new", "new", opts)
