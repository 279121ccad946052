"""Ingest sources and bad input: parquet, WARC, .zst, gigantic and malformed lines, truncated gzip."""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path

import pytest

from contracts.events import IngestOptions
from services.corpus_ingest.core import run_ingest
from services.corpus_ingest.core.readers import FileReport, ReadLimits, file_format, read_file

TEXT = (
    "The northern valley is home to farmers who grow apples and barley on the terraced hills above the river."
)
PAGE = (
    "<html><head><title>Valley &amp; hills</title><link rel='canonical' href='https://ex.org/v'></head>"
    f"<body><nav>Home | About</nav><article><p>{TEXT}</p><p>{TEXT.replace('apples', 'pears')}</p>"
    "<p>Like this story? Share it with a friend!</p></article></body></html>"
)


def _read(path: Path, limits: ReadLimits = ReadLimits()) -> tuple[list[str], FileReport]:
    report = FileReport(path=str(path), format=file_format(path) or "unknown")
    return [d.text for d in read_file(path, report, limits)], report


def test_parquet_reader(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"id": ["a", "b"], "text": [TEXT, None], "url": ["https://x.org/a", None]}), path)
    texts, report = _read(path)
    assert texts == [TEXT] and report.errors == {"missing_text": 1}
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    assert _read(tmp_path / "bad.parquet")[1].errors == {"truncated_or_corrupt": 1}


def test_warc_reader_extracts_html_records(tmp_path: Path) -> None:
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    path = tmp_path / "crawl.warc.gz"
    with open(path, "wb") as fh:
        w = WARCWriter(fh, gzip=True)
        for i, (ctype, body) in enumerate([("text/html", PAGE.encode()), ("image/png", b"\x89PNG")]):
            headers = StatusAndHeaders("200 OK", [("Content-Type", ctype)], protocol="HTTP/1.1")
            w.write_record(
                w.create_warc_record(
                    f"https://ex.org/{i}", "response", payload=io.BytesIO(body), http_headers=headers
                )
            )
    report = FileReport(path=str(path), format="warc")
    docs = list(read_file(path, report))
    assert (
        len(docs) == 1 and docs[0].url == "https://ex.org/0" and docs[0].meta == {"title": "Valley & hills"}
    )
    assert "apples" in docs[0].text and "Share it with a friend" not in docs[0].text
    # A truncated WARC keeps what was read and records the damage.
    (tmp_path / "cut.warc.gz").write_bytes(path.read_bytes()[:-40])
    cut = FileReport(path="cut", format="warc")
    list(read_file(tmp_path / "cut.warc.gz", cut))
    assert cut.errors and set(cut.errors) <= {"truncated_or_corrupt"}


def test_bad_jsonl_is_counted_never_raised(tmp_path: Path) -> None:
    lines = [json.dumps({"text": TEXT}), "{oops", json.dumps({"text": "x" * 5000}), json.dumps({"no": 1})]
    lines.append(json.dumps({"text": TEXT + " end"}))
    path = tmp_path / "d.jsonl"
    path.write_bytes(("\n".join(lines) + "\n").encode() + b'{"text": "bad \xff byte"}\n')
    texts, report = _read(path, ReadLimits(doc_bytes=1000))
    assert texts[0] == TEXT and texts[1].endswith(" end") and len(texts) == 3
    assert report.errors == {
        "malformed_json": 1,
        "gigantic_line": 1,
        "missing_text": 1,
        "undecodable_bytes": 1,
    }
    gz = tmp_path / "t.jsonl.gz"
    gz.write_bytes(gzip.compress(path.read_bytes())[:-30])
    assert "truncated_or_corrupt" in _read(gz)[1].errors


def test_zst_round_trip_and_web_filters(tmp_path: Path) -> None:
    zstd = pytest.importorskip("zstandard")
    src = tmp_path / "in.jsonl.zst"
    rows = [
        {"id": "ok", "text": TEXT + " " + TEXT.replace("valley", "plain"), "url": "https://good.org/a"},
        {"id": "blocked", "text": TEXT, "url": "https://ads.spam.com/x"},
        {"id": "lorem", "text": "Lorem ipsum dolor sit amet. " + TEXT},
        {"id": "list", "text": "\n".join(f"item {i}" for i in range(40))},
        {"id": "unsafe", "text": TEXT + " online casino online casino online casino."},
    ]
    src.write_bytes(zstd.ZstdCompressor().compress("".join(json.dumps(r) + "\n" for r in rows).encode()))
    opts = IngestOptions(
        languages=["en"],
        filters=["url", "gopher_quality", "c4", "fineweb", "safety"],
        blocked_domains=["spam.com"],
        c4_min_sentences=1,
        output_format="jsonl.zst",
    )
    m = run_ingest([str(src)], tmp_path / "out", "z", opts)
    assert m["format"] == "jsonl.zst" and m["shards"][0]["path"].endswith(".jsonl.zst")
    assert m["exclusions_by_rule"]["url.url"] == 1 and m["exclusions_by_rule"]["c4.lorem_ipsum"] == 1
    excluded = {
        r["id"]: r
        for s in m["excluded_shards"]
        for r in map(
            json.loads,
            zstd.ZstdDecompressor()
            .stream_reader(open(tmp_path / "out" / s["path"], "rb"))
            .read()
            .splitlines(),
        )
    }
    assert excluded["blocked"]["filter"] == "url" and "spam.com" in excluded["blocked"]["reason"]
    assert excluded["lorem"]["rule"] == "lorem_ipsum"
    assert excluded["list"]["filter"] in ("gopher_quality", "fineweb")
    assert excluded["unsafe"]["filter"] == "safety"
    assert m["documents"] == 1
    assert [s["docs_out"] for s in m["stages"]][-1] == 1 and m["stages"][-1]["stage"] == "safety"
