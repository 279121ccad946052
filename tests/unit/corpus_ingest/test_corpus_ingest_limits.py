"""Bounded reads: a decompression bomb is stopped at the per-document / per-file limit with small
memory, a large .txt streams, a job over its size limit is refused before any work."""

from __future__ import annotations

import gzip
import io
import json
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from services.corpus_ingest.config import IngestSettings
from services.corpus_ingest.core import IngestInputError, run_ingest
from services.corpus_ingest.core.readers import FileReport, RawDoc, ReadLimits, file_format, read_file

MiB = 1 << 20
TEXT = (
    "The northern valley is home to farmers who grow apples and barley on the terraced hills above the river."
)
T = TypeVar("T")


def gzip_bomb(path: Path, size: int, prefix: bytes = b"") -> Path:
    """``size`` bytes of zeros after ``prefix``, gzipped (about a thousandth of that on disk)."""
    with gzip.open(path, "wb", compresslevel=1) as g:
        g.write(prefix)
        zeros = bytes(MiB)
        for _ in range(size // MiB):
            g.write(zeros)
    return path


def peak_memory(fn: Callable[[], T]) -> tuple[T, int]:
    """``fn()`` and the peak of Python allocations while it ran."""
    tracemalloc.start()
    try:
        return fn(), tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def reader(path: Path, limits: ReadLimits) -> tuple[Iterator[RawDoc], FileReport]:
    report = FileReport(path=str(path), format=file_format(path) or "unknown")
    return read_file(path, report, limits), report


def test_gzip_bombs_stop_at_the_limits_in_small_memory(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    gzip_bomb(src / "page.html.gz", 200 * MiB, b"<html><body><p>")
    gzip_bomb(src / "rows.jsonl.gz", 200 * MiB, (json.dumps({"text": TEXT}) + "\n").encode())
    (src / "good.jsonl").write_text(json.dumps({"id": "kept", "text": TEXT}) + "\n")
    assert sum(p.stat().st_size for p in src.iterdir()) < 2 * MiB
    limits = ReadLimits(doc_bytes=1 * MiB, file_bytes=16 * MiB)
    run_ingest([str(src / "good.jsonl")], tmp_path / "warm", "warm")  # the language models load once

    manifest, peak = peak_memory(lambda: run_ingest([str(src)], tmp_path / "out", "bomb", limits=limits))

    assert peak < 24 * MiB, f"peak {peak / MiB:.0f} MiB"  # decompressing either whole takes 200 MiB
    files = {Path(f["path"]).name: f for f in manifest["files"]}
    page = files["page.html.gz"]
    assert page["errors"] == {"document_too_large": 1} and page["documents"] == 0
    assert page["error_samples"] == [
        "document_too_large: page.html.gz: the page decompresses to more than 1048576 bytes, over the "
        "per-document limit of 1048576 bytes (corpus_ingest_max_doc_bytes), skipped"
    ]
    rows = files["rows.jsonl.gz"]
    assert rows["errors"] == {"file_too_large": 1} and rows["documents"] == 1  # the line before is kept
    assert rows["error_samples"] == [
        "file_too_large: rows.jsonl.gz decompresses to more than 16777216 bytes, over the per-file limit "
        "of 16777216 bytes (corpus_ingest_max_file_bytes): reading stopped there, the documents before "
        "it are kept"
    ]
    assert files["good.jsonl"]["documents"] == 1 and manifest["file_errors"] == 2
    assert manifest["stages"][0]["docs_in"] == 2


def test_large_txt_streams_documents_as_it_reads(tmp_path: Path) -> None:
    path = tmp_path / "book.txt"
    paragraphs = [f"Paragraph {i}. {TEXT}" for i in range(300_000)]  # about 36 MiB
    path.write_text("\n\n".join(paragraphs))
    assert path.stat().st_size > 32 * MiB
    docs, report = reader(path, ReadLimits())

    first, peak_first = peak_memory(lambda: next(docs))
    assert first.id == "book.txt#0" and first.text.startswith("Paragraph 0. ")
    # A few chunks of 1 MiB in flight; read whole, the file would take several times its size.
    assert peak_first < 10 * MiB, f"peak {peak_first / MiB:.1f} MiB before the first document"
    read = len(first.text.split("\n\n"))
    assert first.text.split("\n\n") == paragraphs[:read]
    sizes: list[int] = []

    def check_the_rest() -> int:  # every paragraph, in order, without holding the documents
        done = read
        for doc in docs:
            part = doc.text.split("\n\n")
            assert part == paragraphs[done : done + len(part)]
            done += len(part)
            sizes.append(len(doc.text.encode()))
        return done

    done, peak = peak_memory(check_the_rest)
    assert peak < 10 * MiB, f"peak {peak / MiB:.1f} MiB"
    assert done == len(paragraphs) and len(sizes) > 30 and max(sizes) <= 1 * MiB and not report.errors


def test_txt_without_blank_lines_is_cut_at_line_ends_and_a_giant_line_skipped(tmp_path: Path) -> None:
    path = tmp_path / "lines.txt"
    lines = [f"line {i}: {TEXT}" for i in range(30_000)]  # about 3.5 MiB, no blank line
    lines.insert(100, "x" * (3 * MiB))
    path.write_text("\n".join(lines))
    docs, report = reader(path, ReadLimits(doc_bytes=256 * 1024, txt_doc_bytes=64 * 1024))
    texts = [d.text for d in docs]
    assert all(len(t.encode()) <= 256 * 1024 for t in texts)
    kept = [line for t in texts for line in t.split("\n")]
    assert kept == lines[:100] + lines[101:]
    assert report.errors == {"document_too_large": 1}
    assert "a line of more than 262144 bytes, over the per-document limit" in report.samples[0]


def test_warc_record_and_parquet_row_over_the_document_limit_are_skipped(tmp_path: Path) -> None:
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    warc = tmp_path / "crawl.warc.gz"
    with open(warc, "wb") as fh:
        w = WARCWriter(fh, gzip=True)
        for i, body in enumerate(
            [f"<p>{'big ' * 2000}</p>", f"<article><p>{TEXT}</p><p>{TEXT}</p></article>"]
        ):
            headers = StatusAndHeaders("200 OK", [("Content-Type", "text/html")], protocol="HTTP/1.1")
            record = w.create_warc_record(
                f"https://ex.org/{i}", "response", payload=io.BytesIO(body.encode()), http_headers=headers
            )
            w.write_record(record)
    docs, report = reader(warc, ReadLimits(doc_bytes=4096))
    assert [d.url for d in docs] == ["https://ex.org/1"]
    assert report.errors == {"document_too_large": 1} and "record 1 (https://ex.org/0)" in report.samples[0]

    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    table = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"text": ["é" * 3000, TEXT]}), table)
    docs, report = reader(table, ReadLimits(doc_bytes=4096))
    assert [d.text for d in docs] == [TEXT]
    assert report.samples == [
        "document_too_large: rows.parquet: row 1 has 6000 bytes of text, over the per-document limit "
        "of 4096 bytes (corpus_ingest_max_doc_bytes), skipped"
    ]
    docs, report = reader(table, ReadLimits(file_bytes=16))
    assert list(docs) == [] and set(report.errors) == {"file_too_large"}


def test_a_job_over_its_size_limit_is_refused_before_any_work(tmp_path: Path) -> None:
    src = tmp_path / "a.jsonl"
    src.write_text(json.dumps({"text": TEXT}) + "\n")
    size = src.stat().st_size
    with pytest.raises(
        IngestInputError, match=f"sources hold {size} bytes in 1 files, over the job limit of 100"
    ):
        run_ingest([str(src)], tmp_path / "out", "big", limits=ReadLimits(job_bytes=100))
    assert not (tmp_path / "out").exists()
    assert run_ingest([str(src)], tmp_path / "out", "ok", limits=ReadLimits(job_bytes=size))["documents"] == 1


def test_settings_give_the_limits() -> None:
    limits = IngestSettings(
        corpus_ingest_max_doc_bytes=4096,
        corpus_ingest_max_file_bytes=1 << 30,
        corpus_ingest_max_job_bytes=1 << 40,
        corpus_ingest_txt_max_doc_bytes=2048,
    ).read_limits()
    assert limits == ReadLimits(doc_bytes=4096, file_bytes=1 << 30, job_bytes=1 << 40, txt_doc_bytes=2048)
    assert IngestSettings().read_limits() == ReadLimits()
