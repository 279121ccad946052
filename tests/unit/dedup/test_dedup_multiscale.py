"""Multi-scale dedup: paragraphs and lines, the persisted index of earlier datasets, resumable stages."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import numpy as np
import pytest

from contracts.events import DedupOptions
from services.dedup.core import DedupInputError, run_dedup
from services.dedup.core.minhash import MinHasher, tokens
from services.dedup.core.stages import ShardSignatures, shard_signatures

WORDS = "river mountain harbour market library festival valley winter summer railway copper silk".split()


def exact_key(text: str) -> str:
    """The exact-dedup key of one text, as a batch of one computes it."""
    return MinHasher(1, 1, seed=0).signatures_and_keys([text], near=False)[1][0]


def text(rng: random.Random, n: int = 80) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def write(folder: Path, name: str, rows: list[dict[str, str]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with gzip.open(folder / name, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return folder


def read(out: Path, key: str, m: dict) -> dict[str, dict]:
    return {r["id"]: r for s in m[key] for r in map(json.loads, gzip.open(out / s["path"]))}


def test_batched_tokens_match_the_regex_tokenizer() -> None:
    h = MinHasher(8, 3, seed=1)
    texts = ["首都 Velm, 市场! ok", "", "a_b ÉCOLE café 123", "x"]
    _, bounds = h.token_hashes([t.casefold() for t in texts])
    assert np.diff(bounds).tolist() == [len(tokens(t)) for t in texts]
    sigs = h.signatures(texts)
    assert sigs.shape == (4, 8) and (sigs[0] == h.signature(texts[0])).all()
    assert exact_key("Hello, World!") == exact_key("hello world") != exact_key("hello there world")


def test_paragraph_and_line_dedup(tmp_path: Path) -> None:
    rng = random.Random(1)
    footer = "Copyright notice of the example publishing house, all rights reserved worldwide."
    nav = "Home | News | Sport | Weather | Culture | Travel | About this site | Contact us"
    rows = [{"id": f"d{i}", "text": f"{nav}\n{text(rng)}\n\n{footer}"} for i in range(4)]
    rows.append({"id": "d9", "text": f"{nav}\n\n{footer}"})  # nothing left once the spans go
    src = write(tmp_path / "src", "a.jsonl.gz", rows)
    opts = DedupOptions(line_dedup=True, paragraph_dedup=True, near=False)
    m = run_dedup([src], tmp_path / "out", "x", opts)
    kept = read(tmp_path / "out", "shards", m)
    assert nav in kept["d0"]["text"] and footer in kept["d0"]["text"]  # the first keeps them
    assert all(nav not in kept[f"d{i}"]["text"] and footer not in kept[f"d{i}"]["text"] for i in (1, 2, 3))
    assert kept["d1"]["dedup_spans_removed"] == 2
    assert read(tmp_path / "out", "removed_shards", m)["d9"]["reason"] == "spans"
    st = m["stats"]
    assert (st["span_removed_paragraphs"], st["span_removed_lines"], st["span_emptied_documents"]) == (
        4,
        4,
        1,
    )
    assert m["stages"][-1] == {"stage": "span_dedup", "docs_in": 5, "docs_out": 4}


def test_dedup_against_persisted_index_of_earlier_dataset(tmp_path: Path) -> None:
    rng = random.Random(2)
    old = [{"id": f"o{i}", "text": text(rng)} for i in range(20)]
    first = run_dedup(
        [write(tmp_path / "old", "a.jsonl.gz", old)], tmp_path / "old-out", "old", DedupOptions()
    )
    assert first["index"]["documents"] == 20
    words = old[3]["text"].split()
    words[10] = "changed"
    new = [
        {"id": "n-exact", "text": old[5]["text"].upper()},
        {"id": "n-near", "text": " ".join(words)},
        {"id": "n-fresh", "text": text(rng)},
    ]
    opts = DedupOptions(against_indexes=[str(tmp_path / "old-out")])
    m = run_dedup([write(tmp_path / "new", "b.jsonl.gz", new)], tmp_path / "new-out", "new", opts)
    removed = read(tmp_path / "new-out", "removed_shards", m)
    assert removed["n-exact"]["reason"] == "exact_prior" and removed["n-exact"]["kept_id"] == "o5"
    assert removed["n-near"]["reason"] == "near_prior" and removed["n-near"]["kept_id"] == "o3"
    assert set(read(tmp_path / "new-out", "shards", m)) == {"n-fresh"}
    assert (m["stats"]["prior_exact_duplicates"], m["stats"]["prior_near_duplicates"]) == (1, 1)
    with pytest.raises(DedupInputError, match="not comparable"):
        run_dedup([tmp_path / "new"], tmp_path / "x", "x", opts.model_copy(update={"bands": 7, "rows": 16}))
    with pytest.raises(DedupInputError, match="no persisted dedup index"):
        run_dedup(
            [tmp_path / "new"], tmp_path / "y", "y", DedupOptions(against_indexes=[str(tmp_path / "new")])
        )


def test_finished_shards_are_not_redone_and_workers_agree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(3)
    base = [text(rng) for _ in range(30)]
    src = tmp_path / "src"
    for s in range(3):
        write(src, f"p{s}.jsonl.gz", [{"id": f"s{s}-{i}", "text": base[(i + s) % 30]} for i in range(10)])
    one = run_dedup([src], tmp_path / "one", "x", DedupOptions())
    two = run_dedup([src], tmp_path / "two", "x", DedupOptions(), workers=2)
    assert one["stats"] == two["stats"] and one["stats"]["exact_duplicates"] == 18
    # A run that died after stage 1 of one shard: its result is reused, the others are computed.
    from services.dedup.core import pipeline

    out = tmp_path / "resume"
    (out / ".work").mkdir(parents=True)
    shards = sorted(src.glob("*.gz"))
    shard_signatures(shards[0], DedupOptions()).save(
        out / ".work" / f"sig-{pipeline.signature_key(shards[0], DedupOptions())}.npz"
    )
    (out / ".work" / "sig-partial.npz.tmp").write_bytes(b"half written by a killed worker")
    seen: list[str] = []
    real = pipeline.shard_signatures

    def spy(shard: Path, options: DedupOptions) -> ShardSignatures:
        seen.append(shard.name)
        return real(shard, options)

    monkeypatch.setattr(pipeline, "shard_signatures", spy)
    again = run_dedup([src], out, "x", DedupOptions())
    assert seen == ["p1.jsonl.gz", "p2.jsonl.gz"] and again["stats"] == one["stats"]
    assert not (out / ".work").exists()
