"""Unit tests of the ingest core: readers, normalisation, quality signals, language id, the pipeline."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from contracts.events import IngestOptions
from services.corpus_ingest.core import IngestInputError, run_ingest
from services.corpus_ingest.core.blocks import Document, Pipeline
from services.corpus_ingest.core.filters import C4Quality, FineWebQuality, GopherQuality, GopherRepetition
from services.corpus_ingest.core.langid import LanguageIdentifier
from services.corpus_ingest.core.normalize import normalize_text
from services.corpus_ingest.core.readers import FileReport, ReadLimits, expand_sources, read_file
from services.corpus_ingest.core.signals import compute_signals
from shared.errors import Refusal

EN = [
    "The northern valley is home to farmers who grow apples and barley on the terraced hills.",
    "Every autumn the town holds a market where traders sell wool, salt and copper from the mountains.",
    "A narrow railway climbs from the harbour to the old fortress, which is now a museum of local history.",
]
FR = "La capitale du pays se trouve au bord d'une grande rivière et attire de nombreux visiteurs chaque été."
ZH = "这个国家的首都位于一条大河旁边，每年夏天都有很多游客来参观古老的市场和图书馆。"
HTML = """<!doctype html><html><head><title>Valley guide</title>
<link rel="canonical" href="https://example.org/valley"></head><body>
<nav><a href="/">Home</a> | <a href="/about">About</a> | <a href="/login">Login</a></nav>
<article><h1>The valley</h1><p>{p0}</p><p>{p1}</p><p>{p2}</p></article>
<footer>Copyright 2026 Example. All rights reserved. Cookie settings.</footer></body></html>"""


def quality_failure(signals: dict[str, Any], o: IngestOptions) -> tuple[str, str, str] | None:
    """(filter, rule, reason) of the first chosen text filter that drops a document with ``signals``."""
    doc = Document("doc", "", "test", None, {}, signals=signals)
    text_filters = [
        GopherQuality.from_options(o),
        GopherRepetition.from_options(o),
        C4Quality(o.c4_min_sentences),
        FineWebQuality.from_options(o),
    ]
    drop = Pipeline(text_filters, o.filters).check(doc)
    return (drop.filter, drop.rule, drop.reason) if drop else None


def read_all(path: Path) -> tuple[list[str], FileReport]:
    from services.corpus_ingest.core.readers import file_format

    report = FileReport(path=str(path), format=file_format(path) or "unknown")
    return [d.text for d in read_file(path, report, ReadLimits(txt_doc_bytes=2048))], report


def test_normalize_nfkc_controls_whitespace_paragraphs() -> None:
    raw = "Ｆｕｌｌ\u200bwidth\x07  text\t here\r\n\r\n\r\n\r\nnext   para\x00graph \n"
    assert normalize_text(raw) == "Fullwidth text here\n\nnext paragraph"


def test_signals_are_cjk_aware() -> None:
    s = compute_signals(ZH)
    assert s["cjk_chars"] >= 35 and s["words"] >= 35
    assert s["mean_word_length"] is None  # not meaningful for CJK
    assert quality_failure(s, IngestOptions()) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ok fine", "gopher_quality.word_count"),
        ("a b c d e f g h i j k l", "gopher_quality.mean_word_length"),
        ("#tag #tag #win #lol #fun #yes ... ... more words here", "gopher_quality.symbol_ratio"),
        (
            "click here now\nclick here now\nclick here now\nreal line of text",
            "gopher_quality.duplicate_lines",
        ),
        ("12345 67890 13579 24680 11111 22222 words", "gopher_quality.alpha_fraction"),
        (EN[0], None),
    ],
)
def test_quality_filters(text: str, expected: str | None) -> None:
    failure = quality_failure(compute_signals(text), IngestOptions())
    assert (f"{failure[0]}.{failure[1]}" if failure else None) == expected


def test_language_identification() -> None:
    li = LanguageIdentifier(("en", "fr", "zh", "de"))
    assert li.identify(EN[1])[0] == "en"
    assert li.identify(EN[1])[1] > 0.5
    assert li.identify(FR)[0] == "fr"
    assert li.identify(ZH)[0] == "zh"
    # a refusal (rejected at once with the reason), not a bug to retry
    with pytest.raises(Refusal, match="unknown ISO 639-1 language code 'xx'"):
        LanguageIdentifier(("en", "xx"))


def test_jsonl_reader_counts_bad_lines(tmp_path: Path) -> None:
    p = tmp_path / "a.jsonl"
    p.write_bytes(
        json.dumps({"id": "x1", "text": EN[0], "url": "https://e.org/1", "meta": {"k": 1}}).encode()
        + b"\n"
        + b"{not json\n"
        + b'{"no_text": 1}\n'
        + b'{"text": "caf\xe9 au lait is a drink people like"}\n'
        + b"\n"
        + json.dumps({"text": EN[1]}).encode()
        + b"\n"
    )
    texts, report = read_all(p)
    assert len(texts) == 3
    assert report.errors == {"malformed_json": 1, "missing_text": 1, "undecodable_bytes": 1}


def test_truncated_gzip_and_empty_file(tmp_path: Path) -> None:
    data = gzip.compress("".join(json.dumps({"text": t}) + "\n" for t in EN * 50).encode())
    p = tmp_path / "t.jsonl.gz"
    p.write_bytes(data[: len(data) // 2])
    texts, report = read_all(p)
    assert 0 < len(texts) < 150
    assert report.errors["truncated_or_corrupt"] == 1
    (tmp_path / "e.txt").write_bytes(b"")
    assert read_all(tmp_path / "e.txt")[1].errors == {"empty_file": 1}


def test_zstd_jsonl(tmp_path: Path) -> None:
    zstandard = pytest.importorskip("zstandard")
    p = tmp_path / "z.jsonl.zst"
    p.write_bytes(
        zstandard.ZstdCompressor().compress("".join(json.dumps({"text": t}) + "\n" for t in EN).encode())
    )
    assert read_all(p)[0] == EN


def test_html_main_text_and_canonical(tmp_path: Path) -> None:
    p = tmp_path / "page.html"
    p.write_text(HTML.format(p0=EN[0], p1=EN[1], p2=EN[2]))
    report = FileReport(path=str(p), format="html")
    (doc,) = list(read_file(p, report))
    assert doc.url == "https://example.org/valley"
    assert doc.meta == {"title": "Valley guide"}
    assert EN[0] in doc.text and EN[2] in doc.text
    assert "Cookie" not in doc.text and "Login" not in doc.text


def test_large_txt_is_split_at_blank_lines(tmp_path: Path) -> None:
    p = tmp_path / "book.txt"
    p.write_text("\n\n".join(EN * 20))
    texts, _ = read_all(p)
    assert len(texts) > 1 and all(len(t.encode()) <= 2048 for t in texts)
    assert sum(t.count("apples") for t in texts) == 20
    small = tmp_path / "note.txt"
    small.write_text("\n\n".join(EN))
    assert len(read_all(small)[0]) == 1


def test_expand_sources_globs_folders_missing(tmp_path: Path) -> None:
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "sub" / "a.txt").write_text(EN[0])
    (tmp_path / "d" / "b.jsonl").write_text("")
    (tmp_path / "d" / "ignored.bin").write_bytes(b"\0")
    files, missing = expand_sources(
        [str(tmp_path / "d"), str(tmp_path / "d" / "*.jsonl"), "/no/such/file.txt"]
    )
    assert sorted(f.name for f in files) == ["a.txt", "b.jsonl"]
    assert missing == ["/no/such/file.txt"]


def _corpus(root: Path) -> list[str]:
    root.mkdir()
    records = [{"id": f"en-{i}", "text": t} for i, t in enumerate(EN)]
    records += [{"id": "fr", "text": FR}, {"id": "zh", "text": ZH}, {"id": "junk", "text": "$$$ ### !!! @@@"}]
    (root / "docs.jsonl").write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records) + "{bad\n"
    )
    (root / "page.html").write_text(HTML.format(p0=EN[2], p1=EN[1], p2=EN[0]))
    (root / "note.txt").write_text("  A plain   note about the river that runs\tthrough the quiet town.  ")
    (root / "empty.txt").write_text("")
    return [str(root)]


def test_pipeline_end_to_end(tmp_path: Path) -> None:
    sources = _corpus(tmp_path / "src")
    out = tmp_path / "out"
    m = run_ingest(sources, out, "demo-1234", IngestOptions(languages=["en", "zh"], shard_docs=2))
    assert m["documents"] == 6  # 3 en jsonl + zh + html + txt
    assert m["languages"] == {"en": 5, "zh": 1}
    assert m["exclusions_by_filter"] == {"gopher_quality": 1, "language": 1}
    assert m["exclusions_by_rule"] == {"gopher_quality.word_count": 1, "language.language": 1}
    assert next(s["stage"] for s in m["stages"]) == "read" and m["stages"][-1]["docs_out"] == 6
    assert len(m["shards"]) == 3
    rows = [json.loads(line) for s in m["shards"] for line in gzip.open(out / s["path"])]
    assert {"id", "text", "lang", "lang_score", "source", "url", "meta", "signals"} <= set(rows[0])
    note = next(r for r in rows if r["id"] == "note.txt")
    assert note["text"] == "A plain note about the river that runs through the quiet town."
    assert next(r for r in rows if r["id"] == "page.html")["url"] == "https://example.org/valley"
    excluded = {
        json.loads(line)["id"]: json.loads(line)
        for s in m["excluded_shards"]
        for line in gzip.open(out / s["path"])
    }
    assert excluded["fr"]["filter"] == "language" and "fr" in excluded["fr"]["reason"]
    assert excluded["junk"]["filter"] == "gopher_quality" and excluded["junk"]["rule"] == "word_count"
    errors = {Path(f["path"]).name: f["errors"] for f in m["files"]}
    assert errors["docs.jsonl"] == {"malformed_json": 1} and errors["empty.txt"] == {"empty_file": 1}
    assert m["file_errors"] == 2
    # A rerun overwrites the same place with byte-identical shards.
    first = (out / "manifest.json").read_text()
    run_ingest(sources, out, "demo-1234", IngestOptions(languages=["en", "zh"], shard_docs=2))
    assert (out / "manifest.json").read_text() == first


def test_pipeline_rejects_missing_and_unreadable(tmp_path: Path) -> None:
    with pytest.raises(IngestInputError, match="nope"):
        run_ingest([str(tmp_path / "nope.jsonl")], tmp_path / "o1", "x")
    (tmp_path / "bad.jsonl").write_text("{broken\n")
    with pytest.raises(IngestInputError, match="no readable documents"):
        run_ingest([str(tmp_path / "bad.jsonl")], tmp_path / "o2", "x")


def test_mean_word_length_ignores_punctuation_at_word_edges_in_any_script() -> None:
    # «Hello» → Hello (5), world!!! → world (5), ¿Qué? → Qué (3), "don't" keeps its inner
    # apostrophe (5); a word of punctuation only ("—", "...") is not a word.
    s = compute_signals("«Hello» world!!! ¿Qué? — don't ...")
    assert s["mean_word_length"] == 4.5
