"""Parquet output shards: a lossless record ↔ table mapping, ingest writing Parquet, and the
manifest recording the format."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from contracts.events import IngestOptions
from services.cli.__main__ import main
from services.corpus_ingest.core import run_ingest
from shared.parquet_records import records_to_table, table_records
from shared.shards import ShardReadError, ShardWriter, iter_records

EN = [
    "The northern valley is home to farmers who grow apples and barley on the terraced hills.",
    "Every autumn the town holds a market where traders sell wool, salt and copper from the mountains.",
    "A narrow railway climbs from the harbour to the old fortress, which is now a museum of local history.",
]
ZH = "这个国家的首都位于一条大河旁边，每年夏天都有很多游客来参观古老的市场和图书馆。"


def test_records_round_trip_losslessly_and_typed() -> None:
    records = [
        {"id": "a", "text": "x", "lang_score": 0.5, "n": 1, "ok": True, "url": None, "meta": {"k": [1, 2]}},
        {"id": "b", "text": "y", "lang_score": 1.0, "n": 2, "ok": False, "url": "https://e.org", "meta": {}},
        {"id": "c", "text": "z", "lang_score": 0.25, "n": 3, "ok": True, "url": None, "only_here": "q"},
        {"id": "d", "text": "首都", "lang_score": 0.0, "n": 1 << 70, "ok": True, "url": None, "mixed": 1},
        {"id": "e", "text": "", "lang_score": 2.5, "n": 4, "ok": False, "url": None, "mixed": "one"},
    ]
    table = records_to_table(records)
    assert list(table.column_names[:2]) == ["id", "text"]
    types = {f.name: f.type for f in table.schema}
    # Plain columns where the values allow it: other tools read them as they are.
    assert types["lang_score"] == pa.float64() and types["ok"] == pa.bool_() and types["url"] == pa.string()
    assert types["n"] == pa.string()  # an integer beyond 64 bits: kept exactly, as JSON
    assert list(table_records(table)) == records  # missing keys stay missing, None stays None


def test_shard_writer_parquet_is_deterministic_and_readable(tmp_path: Path) -> None:
    rows = [{"id": f"d{i}", "text": f"text {i}", "signals": {"words": i}} for i in range(5)]
    shards = []
    for run in ("a", "b"):
        w = ShardWriter(tmp_path / run, "part", 2, tmp_path / run, "parquet")
        for r in rows[:4]:
            w.write(r)
        w.write_line(json.dumps(rows[4]).encode() + b"\n")  # a serialised record is parsed
        shards.append(w.close())
    assert [s["documents"] for s in shards[0]] == [2, 2, 1]
    assert shards[0] == shards[1]  # same sha256: byte-identical
    got = [r for s in shards[0] for r in iter_records(tmp_path / "a" / s["path"])]
    assert got == rows
    assert pq.read_table(tmp_path / "a" / shards[0][0]["path"]).column("text").to_pylist() == [
        "text 0",
        "text 1",
    ]
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(ShardReadError, match=r"bad\.parquet: unreadable Parquet shard"):
        list(iter_records(tmp_path / "bad.parquet"))


def _sources(root: Path) -> list[str]:
    root.mkdir()
    records = [{"id": f"en-{i}", "text": t, "meta": {"n": i}} for i, t in enumerate(EN)]
    records += [{"id": "zh", "text": ZH, "url": "https://example.cn/a"}, {"id": "junk", "text": "$$ ## !!"}]
    (root / "docs.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return [str(root)]


def test_ingest_writes_parquet_with_the_same_records(tmp_path: Path) -> None:
    sources = _sources(tmp_path / "src")
    gz = run_ingest(sources, tmp_path / "gz", "demo", IngestOptions(shard_docs=2))
    pq_m = run_ingest(sources, tmp_path / "pq", "demo", IngestOptions(shard_docs=2, output_format="parquet"))
    assert pq_m["format"] == "parquet" and gz["format"] == "jsonl.gz"
    assert all(s["path"].endswith(".parquet") for s in pq_m["shards"] + pq_m["excluded_shards"])
    for key in ("shards", "excluded_shards"):
        want = [r for s in gz[key] for r in iter_records(tmp_path / "gz" / s["path"])]
        got = [r for s in pq_m[key] for r in iter_records(tmp_path / "pq" / s["path"])]
        assert got == want and got
    assert {k: v for k, v in pq_m.items() if k not in ("shards", "excluded_shards", "format", "options")} == {
        k: v for k, v in gz.items() if k not in ("shards", "excluded_shards", "format", "options")
    }


def test_cli_format_option(tmp_path: Path) -> None:
    sources = _sources(tmp_path / "src")
    runner = CliRunner()
    result = runner.invoke(
        main, ["corpus", "ingest", *sources, "--out", str(tmp_path / "o"), "--format", "parquet"]
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["format"] == "parquet" and manifest["options"]["output_format"] == "parquet"
    bad = runner.invoke(main, ["corpus", "ingest", *sources, "--out", str(tmp_path / "x"), "--format", "csv"])
    assert bad.exit_code != 0 and "'csv' is not one of" in bad.output
