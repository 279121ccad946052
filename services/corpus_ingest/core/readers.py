"""Source readers: paths, globs and folders of .jsonl(.gz/.zst), .parquet, .txt, .html(.gz), .warc(.gz).

- ``.jsonl`` (optionally ``.gz`` / ``.zst``): one JSON object per line with a ``text`` string and
  optional ``id``, ``url``, ``meta``.
- ``.txt``: the whole file is one document; a file larger than ``txt_max_doc_bytes`` is split at
  blank lines into documents of at most about that size (a book dump is not one training doc).
- ``.parquet``: a ``text`` column, optional ``id``, ``url``, ``meta``; read in record batches.
- ``.html`` / ``.htm`` (optionally ``.gz``): main text by ``extract.extract_html``; the url from
  ``<link rel="canonical">``, the title into ``meta``.
- ``.warc`` / ``.warc.gz`` (warcio): every HTML ``response`` record, extracted like an HTML file.

Bad input never raises out of a reader: it is counted per file (``FileReport.errors``) and the
reader moves on to the next line or file.
"""

from __future__ import annotations

import glob
import gzip
import io
import json
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlparse

from services.corpus_ingest.core.extract import extract_html, html_metadata

JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".ndjson", ".ndjson.gz")
TXT_SUFFIXES = (".txt",)
HTML_SUFFIXES = (".html", ".htm", ".html.gz", ".htm.gz")
PARQUET_SUFFIXES = (".parquet",)
WARC_SUFFIXES = (".warc", ".warc.gz")
SUPPORTED = JSONL_SUFFIXES + TXT_SUFFIXES + HTML_SUFFIXES + PARQUET_SUFFIXES + WARC_SUFFIXES
MAX_LINE_BYTES = 64 << 20  # a JSONL line above this is skipped (and counted), not parsed
_PARQUET_BATCH = 1024
_MAX_SAMPLES = 5


@dataclass
class RawDoc:
    id: str
    text: str
    source: str
    url: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    html: bytes | None = None  # set when extraction is deferred (to a process pool): text is ""


@dataclass
class FileReport:
    path: str
    format: str
    documents: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    samples: list[str] = field(default_factory=list)

    def error(self, kind: str, detail: str) -> None:
        self.errors[kind] += 1
        if len(self.samples) < _MAX_SAMPLES:
            self.samples.append(f"{kind}: {detail}")

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "format": self.format,
            "documents": self.documents,
            "errors": dict(sorted(self.errors.items())),
            "error_samples": self.samples,
        }


def file_format(path: Path) -> str | None:
    name = path.name.lower()
    for fmt, suffixes in (
        ("jsonl", JSONL_SUFFIXES),
        ("txt", TXT_SUFFIXES),
        ("html", HTML_SUFFIXES),
        ("parquet", PARQUET_SUFFIXES),
        ("warc", WARC_SUFFIXES),
    ):
        if name.endswith(suffixes):
            return fmt
    return None


def expand_sources(sources: list[str]) -> tuple[list[Path], list[str]]:
    """(files in a stable order, sources that matched nothing). Folders are searched recursively."""
    files: list[Path] = []
    missing: list[str] = []
    for src in sources:
        parsed = urlparse(src)
        if parsed.scheme not in ("", "file"):
            missing.append(f"{src} (only local paths and file:// URIs are read)")
            continue
        path_str = parsed.path if parsed.scheme == "file" else src
        if glob.has_magic(path_str):
            matched = sorted(Path(p) for p in glob.glob(path_str, recursive=True))
        else:
            matched = [Path(path_str)] if Path(path_str).exists() else []
        found: list[Path] = []
        for p in matched:
            if p.is_dir():
                found += sorted(f for f in p.rglob("*") if f.is_file() and file_format(f))
            elif p.is_file():
                found.append(p)
        if not found:
            missing.append(src)
        files += found
    unique = list(dict.fromkeys(p.resolve() for p in files))
    return unique, missing


def read_file(
    path: Path, report: FileReport, txt_max_doc_bytes: int = 1 << 20, defer_html: bool = False
) -> Iterator[RawDoc]:
    """Documents of one file; with ``defer_html`` HTML comes unextracted (``RawDoc.html``)."""
    try:
        if path.stat().st_size == 0:
            report.error("empty_file", "file has no bytes")
            return
        if report.format == "jsonl":
            yield from _read_jsonl(path, report)
        elif report.format == "txt":
            yield from _read_txt(path, report, txt_max_doc_bytes)
        elif report.format == "html":
            yield from _read_html(path, report, defer_html)
        elif report.format == "parquet":
            yield from _read_parquet(path, report)
        elif report.format == "warc":
            yield from _read_warc(path, report, defer_html)
        else:
            report.error("unsupported_format", f"{path.name}: not one of {', '.join(SUPPORTED)}")
    except OSError as exc:
        report.error("unreadable", str(exc))
    except ImportError as exc:  # pyarrow / warcio / zstandard are optional: say which is missing
        report.error("unsupported_format", f"{path.name}: {exc.name or exc} is not installed")


def _decode(data: bytes, report: FileReport, where: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        report.error("undecodable_bytes", f"{where}: {exc.reason} at byte {exc.start}")
        return data.decode("utf-8", errors="replace")


def _open_binary(path: Path) -> IO[bytes]:
    name = path.name.lower()
    if name.endswith(".gz"):
        return gzip.open(path, "rb")  # type: ignore[return-value]
    if name.endswith(".zst"):
        import zstandard  # optional: only needed for .zst sources

        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True))
    return open(path, "rb")


def _read_jsonl(path: Path, report: FileReport) -> Iterator[RawDoc]:
    try:
        with _open_binary(path) as f:
            for lineno, line in enumerate(_bounded_lines(f), 1):
                if line is None:
                    report.error("gigantic_line", f"line {lineno}: over {MAX_LINE_BYTES} bytes, skipped")
                    continue
                if not line.strip():
                    continue
                doc = _parse_json_line(line, lineno, path, report)
                if doc is not None:
                    yield doc
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        report.error("truncated_or_corrupt", f"{type(exc).__name__}: {exc}")
    except ImportError:
        report.error("unsupported_format", "zstandard is not installed: cannot read .zst")
    except Exception as exc:  # zstandard.ZstdError and friends: the stream is corrupt
        if type(exc).__module__.startswith("zstandard"):
            report.error("truncated_or_corrupt", f"{type(exc).__name__}: {exc}")
        else:
            raise


def _parse_json_line(line: bytes, lineno: int, path: Path, report: FileReport) -> RawDoc | None:
    text_line = _decode(line, report, f"line {lineno}")
    try:
        obj = json.loads(text_line)
    except json.JSONDecodeError as exc:
        report.error("malformed_json", f"line {lineno}: {exc.msg}")
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
        report.error("missing_text", f"line {lineno}: no string 'text' field")
        return None
    meta: dict[str, Any] = obj["meta"] if isinstance(obj.get("meta"), dict) else {}
    doc_id = obj.get("id")
    url = obj.get("url")
    return RawDoc(
        id=str(doc_id) if doc_id is not None else f"{path.name}:{lineno}",
        text=obj["text"],
        source=str(path),
        url=str(url) if url else None,
        meta=meta,
    )


def _read_txt(path: Path, report: FileReport, max_bytes: int) -> Iterator[RawDoc]:
    text = _decode(path.read_bytes(), report, path.name)
    if len(text.encode()) <= max_bytes:
        yield RawDoc(id=path.name, text=text, source=str(path))
        return
    chunk: list[str] = []
    size = 0
    part = 0
    for block in text.split("\n\n"):
        if chunk and size + len(block.encode()) > max_bytes:
            yield RawDoc(id=f"{path.name}#{part}", text="\n\n".join(chunk), source=str(path))
            chunk, size, part = [], 0, part + 1
        chunk.append(block)
        size += len(block.encode()) + 2
    if chunk:
        yield RawDoc(id=f"{path.name}#{part}", text="\n\n".join(chunk), source=str(path))


def _bounded_lines(f: IO[bytes]) -> Iterator[bytes | None]:
    """Lines of ``f``; None for a line over MAX_LINE_BYTES (read past in chunks, never held whole)."""
    while True:
        line = f.readline(MAX_LINE_BYTES + 1)
        if not line:
            return
        if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
            while (rest := f.readline(1 << 20)) and not rest.endswith(b"\n"):
                pass
            yield None
        else:
            yield line


def _html_doc(
    data: bytes, doc_id: str, source: str, url: str | None, report: FileReport, defer: bool
) -> RawDoc | None:
    page_url, title = html_metadata(data)
    meta: dict[str, Any] = {"title": title} if title else {}
    if defer:
        return RawDoc(id=doc_id, text="", source=source, url=url or page_url, meta=meta, html=data)
    text = extract_html(data)
    if text is None:
        report.error("no_main_text", f"{doc_id}: no main text found")
        return None
    return RawDoc(id=doc_id, text=text, source=source, url=url or page_url, meta=meta)


def _read_html(path: Path, report: FileReport, defer: bool = False) -> Iterator[RawDoc]:
    data = path.read_bytes()
    if path.name.lower().endswith(".gz"):
        try:
            data = gzip.decompress(data)
        except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
            report.error("truncated_or_corrupt", f"{type(exc).__name__}: {exc}")
            return
    doc = _html_doc(data, path.name, str(path), None, report, defer)
    if doc is not None:
        yield doc


def _read_parquet(path: Path, report: FileReport) -> Iterator[RawDoc]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid / OSError subclasses on a bad footer
        report.error("truncated_or_corrupt", f"{type(exc).__name__}: {exc}")
        return
    names = set(pf.schema_arrow.names)
    if "text" not in names:
        report.error("missing_text", f"{path.name}: no 'text' column (columns: {sorted(names)})")
        return
    columns = [c for c in ("id", "text", "url", "meta") if c in names]
    row = 0
    try:
        for batch in pf.iter_batches(batch_size=_PARQUET_BATCH, columns=columns):
            for rec in batch.to_pylist():
                row += 1
                text = rec.get("text")
                if not isinstance(text, str):
                    report.error("missing_text", f"row {row}: 'text' is not a string")
                    continue
                meta = rec.get("meta")
                if isinstance(meta, str):  # puyu's own Parquet shards keep objects as JSON text
                    try:
                        meta = json.loads(meta)
                    except ValueError:
                        meta = {"meta": meta}
                yield RawDoc(
                    id=str(rec["id"]) if rec.get("id") is not None else f"{path.name}:{row}",
                    text=text,
                    source=str(path),
                    url=str(rec["url"]) if rec.get("url") else None,
                    meta=meta if isinstance(meta, dict) else {},
                )
    except Exception as exc:  # a corrupt row group: keep what was read, record the rest
        report.error("truncated_or_corrupt", f"after row {row}: {type(exc).__name__}: {exc}")


def _gzip_damage(path: Path) -> str | None:
    """Why a gzip file does not decompress to its end, or None (a streaming pass, no memory)."""
    try:
        with gzip.open(path, "rb") as g:
            while g.read(1 << 20):
                pass
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _read_warc(path: Path, report: FileReport, defer: bool = False) -> Iterator[RawDoc]:
    from warcio.archiveiterator import ArchiveIterator

    if path.name.lower().endswith(".gz") and (damage := _gzip_damage(path)):
        # warcio stops quietly at a cut gzip member: record it, then salvage the records before it.
        report.error("truncated_or_corrupt", damage)
    n = 0
    try:
        with open(path, "rb") as f:
            # Digests catch what warcio otherwise tolerates: a record cut short by a truncated file.
            for record in ArchiveIterator(f, check_digests=True):
                if record.rec_type != "response":
                    continue
                ctype = (record.http_headers.get_header("Content-Type") or "") if record.http_headers else ""
                if "html" not in ctype.lower():
                    continue
                n += 1
                url = record.rec_headers.get_header("WARC-Target-URI")
                rec_id = record.rec_headers.get_header("WARC-Record-ID") or f"{path.name}:{n}"
                data = record.content_stream().read()
                if record.digest_checker.passed is False:
                    report.error(
                        "truncated_or_corrupt", f"record {n} ({url}): {record.digest_checker.problems}"
                    )
                    continue
                if not data:
                    report.error("no_main_text", f"record {n} ({url}): empty body")
                    continue
                doc = _html_doc(data, rec_id.strip("<>"), str(path), url, report, defer)
                if doc is not None:
                    yield doc
    except Exception as exc:  # warcio raises ArchiveLoadFailed / zlib errors on a damaged file
        report.error("truncated_or_corrupt", f"after record {n}: {type(exc).__name__}: {exc}")
