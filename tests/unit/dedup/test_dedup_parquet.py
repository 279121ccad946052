"""Dedup reading and writing Parquet shards: the same decisions and records as with JSON lines."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import pytest
from click.testing import CliRunner

from contracts.events import DedupOptions
from services.cli.__main__ import main
from services.dedup.core import DedupInputError, run_dedup
from shared.shards import ShardWriter, iter_records

WORDS = "river mountain harbour market library festival valley winter summer railway copper silk".split()


def records() -> list[dict[str, object]]:
    rng = random.Random(4)
    base = [" ".join(rng.choice(WORDS) for _ in range(60)) for _ in range(12)]
    rows: list[dict[str, object]] = [
        {"id": f"d{i:02d}", "text": t, "lang": "en", "signals": {"words": 60}} for i, t in enumerate(base)
    ]
    rows.append({"id": "x-exact", "text": base[3].upper(), "lang": "en", "signals": {"words": 60}})
    words = base[5].split()
    words[7] = "changed"
    rows.append({"id": "x-near", "text": " ".join(words), "lang": "en", "url": None})
    return rows


def dataset(folder: Path, fmt: str) -> Path:
    w = ShardWriter(folder / "data", "part", 5, folder, fmt)
    for r in records():
        w.write(r)
    shards = w.close()
    manifest = {"dataset_id": "src", "documents": w.documents, "format": fmt, "shards": shards}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def all_records(out: Path, shards: list[dict[str, str]]) -> list[dict[str, object]]:
    return [r for s in shards for r in iter_records(out / s["path"])]


def test_parquet_in_parquet_out_matches_jsonl(tmp_path: Path) -> None:
    ref = run_dedup([dataset(tmp_path / "gz", "jsonl.gz")], tmp_path / "ref", "x")
    m = run_dedup([dataset(tmp_path / "pq", "parquet")], tmp_path / "out", "x")
    assert m["format"] == "parquet" and ref["format"] == "jsonl.gz"  # the input's format by default
    assert all(s["path"].endswith(".parquet") for s in m["shards"] + m["removed_shards"])
    assert m["stats"] == ref["stats"] and m["stats"]["exact_duplicates"] == m["stats"]["near_duplicates"] == 1
    assert all_records(tmp_path / "out", m["shards"]) == all_records(tmp_path / "ref", ref["shards"])
    removed = all_records(tmp_path / "out", m["removed_shards"])
    assert removed == all_records(tmp_path / "ref", ref["removed_shards"])
    assert {r["id"]: r["kept_id"] for r in removed} == {"x-exact": "d03", "x-near": "d05"}


@pytest.mark.parametrize(("src_fmt", "out_fmt"), [("jsonl.gz", "parquet"), ("parquet", "jsonl.zst")])
def test_output_format_option(tmp_path: Path, src_fmt: str, out_fmt: str) -> None:
    src = dataset(tmp_path / "src", src_fmt)
    ref = run_dedup([src], tmp_path / "ref", "x", DedupOptions(output_format="jsonl.gz"))
    m = run_dedup([src], tmp_path / "out", "x", DedupOptions(output_format=out_fmt))
    assert m["format"] == out_fmt and m["shards"][0]["path"].endswith(out_fmt)
    assert all_records(tmp_path / "out", m["shards"]) == all_records(tmp_path / "ref", ref["shards"])
    # The output is a dataset the next dedup (or anything reading manifests) takes as input.
    again = run_dedup([tmp_path / "out"], tmp_path / "again", "y")
    assert again["format"] == out_fmt and again["stats"]["documents_out"] == m["documents"]


def test_bad_parquet_input_names_the_file_and_row(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.parquet").write_bytes(b"PAR1 truncated")
    with pytest.raises(DedupInputError, match=r"a\.parquet: unreadable Parquet shard"):
        run_dedup([bad], tmp_path / "o", "x")
    notext = tmp_path / "notext"
    w = ShardWriter(notext, "p", 10, notext, "parquet")
    w.write({"id": "a", "text": "fine"})
    w.write({"id": "b", "body": "no text here"})
    w.close()
    with pytest.raises(DedupInputError, match=r"p-00000\.parquet: row 2: record without a string 'text'"):
        run_dedup([notext], tmp_path / "o2", "x")


def test_cli_dedup_format(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    with gzip.open(src / "a.jsonl.gz", "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in records())
    result = CliRunner().invoke(
        main, ["corpus", "dedup", str(src), "--out", str(tmp_path / "o"), "--format", "parquet"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert summary["documents_out"] == 12
    assert json.loads((tmp_path / "o" / "manifest.json").read_text())["format"] == "parquet"
