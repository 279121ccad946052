"""Unit tests of the dedup core: MinHash, LSH, clustering, the two-pass pipeline."""

from __future__ import annotations

import gzip
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from contracts.events import DedupOptions
from services.dedup.core import DedupInputError, run_dedup
from services.dedup.core.lsh import candidate_pairs
from services.dedup.core.minhash import MinHasher, tokens

WORDS = (
    "river mountain harbour market library festival valley winter summer railway copper silk apples "
    "timber salt glass wool tea horses marble scholar fisher farmer trader castle bridge forest lake "
    "meadow village city tower garden school temple road field island coast desert"
).split()


def doc(rng: random.Random, n: int = 120) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def mutate(text: str, rng: random.Random, changes: int) -> str:
    words = text.split()
    for i in rng.sample(range(len(words)), changes):
        words[i] = "changed"
    return " ".join(words)


def true_jaccard(a: str, b: str, k: int = 5) -> float:
    def sh(t: str) -> set[tuple[str, ...]]:
        toks = tokens(t)
        return {tuple(toks[i : i + k]) for i in range(len(toks) - k + 1)}

    sa, sb = sh(a), sh(b)
    return len(sa & sb) / len(sa | sb)


def exact_key(text: str) -> str:
    """The exact-dedup key of one text, as a batch of one computes it."""
    return MinHasher(1, 1, seed=0).signatures_and_keys([text], near=False)[1][0]


def estimated_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> float:
    """The share of equal MinHash values: what the signatures estimate the Jaccard similarity by."""
    return float(np.mean(sig_a == sig_b))


def test_signature_is_deterministic_across_processes() -> None:
    text = "The capital of Aldoria is Velm, a city on the river."
    sig = MinHasher(16, 5, seed=3).signature(text).tolist()
    code = (
        "from services.dedup.core.minhash import MinHasher;"
        f"print(MinHasher(16, 5, seed=3).signature({text!r}).tolist())"
    )
    other = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "123", "PATH": ""},
        cwd=Path(__file__).parents[3],
    )
    assert json.loads(other.stdout) == sig
    assert MinHasher(16, 5, seed=4).signature(text).tolist() != sig


def test_estimated_jaccard_tracks_true_jaccard() -> None:
    rng = random.Random(0)
    h = MinHasher(256, 5, seed=1)
    for changes in (2, 8, 20):
        a = doc(rng, 200)
        b = mutate(a, rng, changes)
        est = estimated_jaccard(h.signature(a), h.signature(b))
        assert abs(est - true_jaccard(a, b)) < 0.1


def test_cjk_tokens_and_exact_key() -> None:
    assert tokens("首都 Velm, 市场!") == ["首", "都", "velm", "市", "场"]
    assert exact_key("Hello   World\n") == exact_key("hello world")
    assert exact_key("hello world") != exact_key("hello there world")


def write_jsonl(path: Path, records: list[dict[str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    return path


def corpus(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    rng = random.Random(42)
    base = {f"d{i:02d}": doc(rng, 300) for i in range(30)}
    records = dict(base)
    records["x-exact-of-d03"] = base["d03"].upper()  # exact after normalisation
    records["x-exact2-of-d03"] = "  " + base["d03"] + "  "
    records["x-near-of-d05"] = mutate(base["d05"], rng, 3)
    records["x-near-of-d07"] = mutate(base["d07"], rng, 4)
    records["a-near-of-d09"] = mutate(base["d09"], rng, 2)  # sorts first: it is the one kept
    zh = "这个国家的首都位于一条大河旁边每年夏天都有很多游客来参观古老的市场和图书馆" * 2
    records["zh"] = zh
    records["zh-near"] = zh.replace("游客", "商人", 1)
    folder = tmp_path / "in"
    items = list(records.items())
    rng.shuffle(items)
    write_jsonl(folder / "data" / "part-00000.jsonl.gz", [{"id": k, "text": v} for k, v in items[:20]])
    write_jsonl(folder / "data" / "part-00001.jsonl.gz", [{"id": k, "text": v} for k, v in items[20:]])
    manifest = {
        "dataset_id": "src",
        "shards": [{"path": "data/part-00000.jsonl.gz"}, {"path": "data/part-00001.jsonl.gz"}],
        "documents": len(items),
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder, records


def read_shards(out: Path, shards: list[dict[str, str]]) -> list[dict[str, object]]:
    return [json.loads(line) for s in shards for line in gzip.open(out / s["path"])]


def test_pipeline_catches_exact_and_near_keeps_distinct(tmp_path: Path) -> None:
    folder, records = corpus(tmp_path)
    out = tmp_path / "out"
    m = run_dedup([folder], out, "src-dedup")
    kept = {r["id"] for r in read_shards(out, m["shards"])}
    removed = {r["id"]: r for r in read_shards(out, m["removed_shards"])}
    assert set(removed) == {
        "x-exact-of-d03",
        "x-exact2-of-d03",
        "x-near-of-d05",
        "x-near-of-d07",
        "d09",
        "zh-near",
    }
    assert kept == set(records) - set(removed)
    assert all(f"d{i:02d}" in kept for i in range(30) if i != 9)  # distinct documents all kept
    assert removed["d09"]["kept_id"] == "a-near-of-d09" and removed["d09"]["reason"] == "near"
    assert removed["x-exact-of-d03"]["reason"] == "exact" and removed["x-exact-of-d03"]["kept_id"] == "d03"
    assert removed["x-exact-of-d03"]["cluster_id"] == removed["x-exact2-of-d03"]["cluster_id"]
    assert removed["x-near-of-d05"]["jaccard"] >= 0.8
    st = m["stats"]
    assert (st["documents_in"], st["documents_out"], st["exact_duplicates"], st["near_duplicates"]) == (
        37,
        31,
        2,
        4,
    )
    assert st["clusters"] == 5 and m["source_datasets"] == ["src"]
    assert m["stages"][-1]["docs_out"] == 31
    first = (out / "manifest.json").read_text()
    run_dedup([folder], out, "src-dedup")
    assert (out / "manifest.json").read_text() == first  # deterministic, overwrites in place


def test_options_exact_only_and_threshold(tmp_path: Path) -> None:
    folder, _ = corpus(tmp_path)
    m = run_dedup([folder], tmp_path / "o1", "a", DedupOptions(near=False))
    assert (m["stats"]["exact_duplicates"], m["stats"]["near_duplicates"]) == (2, 0)
    m = run_dedup([folder], tmp_path / "o2", "b", DedupOptions(exact=False))
    assert m["stats"]["near_duplicates"] == 6  # exact copies are near duplicates with Jaccard 1
    m = run_dedup([folder], tmp_path / "o3", "c", DedupOptions(jaccard_threshold=1.0))
    assert m["stats"]["near_duplicates"] == 0


def test_bad_input(tmp_path: Path) -> None:
    with pytest.raises(DedupInputError, match="not found"):
        run_dedup([tmp_path / "missing"], tmp_path / "o", "x")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DedupInputError, match="no documents"):
        run_dedup([tmp_path / "empty"], tmp_path / "o", "x")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.jsonl").write_text('{"id": 1}\n')
    with pytest.raises(DedupInputError, match="text"):
        run_dedup([bad], tmp_path / "o", "x")


def test_lsh_scales_vectorised() -> None:
    rng = random.Random(1)
    h = MinHasher(112, 5, seed=1)
    sigs = np.stack([h.signature(doc(rng, 80)) for _ in range(300)])

    def lsh_candidates(signatures: np.ndarray) -> set[tuple[int, int]]:
        return {(a, b) for a, b in candidate_pairs(signatures, 14, 8).tolist()}

    assert len(lsh_candidates(sigs)) < 20  # random docs: (almost) no candidates
    dup = np.concatenate([sigs, sigs[:5]])
    pairs = lsh_candidates(dup)
    assert {(i, 300 + i) for i in range(5)} <= pairs
