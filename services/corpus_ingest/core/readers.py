"""Source readers: paths, globs and folders of .jsonl(.gz/.zst), .parquet, .txt, .html(.gz), .warc(.gz).

- ``.jsonl`` (optionally ``.gz`` / ``.zst``): one JSON object per line with a ``text`` string and
  optional ``id``, ``url``, ``meta``.
- ``.txt``: the whole file is one document; a file larger than ``ReadLimits.txt_doc_bytes`` is read
  in chunks and split at blank lines into documents of at most about that size (a book dump is not
  one training doc).
- ``.parquet``: a ``text`` column, optional ``id``, ``url``, ``meta``; read in record batches.
- ``.html`` / ``.htm`` (optionally ``.gz``): main text by ``extract.extract_html``; the url from
  ``<link rel="canonical">``, the title into ``meta``.
- ``.warc`` / ``.warc.gz`` (warcio): every HTML ``response`` record, extracted like an HTML file.

Bad input never raises out of a reader: it is counted per file (``FileReport.errors``) and the
reader moves on to the next line or file.

Everything is streamed and bounded (``ReadLimits``), whatever a file claims or expands to: one
document (a JSONL line, an HTML page, a WARC record, a .txt paragraph or line) above
``doc_bytes`` decompressed is skipped; a file is read up to ``file_bytes`` decompressed, and
reading stops there (the documents before it are kept). Both are file errors naming the limit.
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
_PARQUET_BATCH = 1024
_MAX_SAMPLES = 5
_CHUNK = 1 << 20  # bytes read at a time (decompressed)


@dataclass(frozen=True)
class ReadLimits:
    """Bounds on what sources may expand to (bytes; the settings ``corpus_ingest_max_*``).

    8 MiB per document holds a whole book (War and Peace is 3.2 MB of text) and any real web page
    (Common Crawl cuts responses at 1 MiB), while a page's HTML extraction, which takes several
    times the page in memory, times the 64 pages read ahead for the extraction pool, stays near a
    gigabyte at worst. 8 GiB per file takes a Common Crawl WARC (about 5 GiB decompressed) or a
    large JSONL shard, and stops a decompression bomb after seconds of work. 64 GiB per job is
    a day's work for one ingest process; larger corpora are split over several jobs.
    """

    doc_bytes: int = 8 << 20  # one document, decompressed: larger ones are skipped
    file_bytes: int = 8 << 30  # one file, decompressed: reading stops past it
    job_bytes: int = 64 << 30  # all files of a job, on disk: a larger job is refused before any work
    txt_doc_bytes: int = 1 << 20  # a .txt is split at blank lines into documents of about this size


class FileLimitExceeded(Exception):
    """A file decompressed past ``ReadLimits.file_bytes`` (caught by ``read_file``)."""

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.limit = limit


class _LimitedReader(io.RawIOBase):
    """``inner`` (plain or decompressing) that raises FileLimitExceeded past ``limit`` bytes.

    Checked once per chunk a BufferedReader fills, never per line."""

    def __init__(self, inner: IO[bytes], limit: int) -> None:
        self._inner, self._limit, self._seen = inner, limit, 0
        # One underlying read per call where there is one: what came before a truncated end of a
        # compressed stream is returned before the error is, so those lines are still read.
        self._readinto = getattr(inner, "readinto1", None) or inner.readinto  # type: ignore[attr-defined]

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self._readinto(buffer)
        self._seen += n
        if self._seen > self._limit:
            raise FileLimitExceeded(self._limit)
        return int(n)

    def close(self) -> None:
        self._inner.close()
        super().close()


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
    path: Path, report: FileReport, limits: ReadLimits = ReadLimits(), defer_html: bool = False
) -> Iterator[RawDoc]:
    """Documents of one file as they are read; with ``defer_html`` HTML comes unextracted (``RawDoc.html``)."""
    try:
        if path.stat().st_size == 0:
            report.error("empty_file", "file has no bytes")
            return
        if report.format == "jsonl":
            yield from _read_jsonl(path, report, limits)
        elif report.format == "txt":
            yield from _read_txt(path, report, limits)
        elif report.format == "html":
            yield from _read_html(path, report, limits, defer_html)
        elif report.format == "parquet":
            yield from _read_parquet(path, report, limits)
        elif report.format == "warc":
            yield from _read_warc(path, report, limits, defer_html)
        else:
            report.error("unsupported_format", f"{path.name}: not one of {', '.join(SUPPORTED)}")
    except FileLimitExceeded as exc:
        report.error("file_too_large", _file_limit_message(path, exc.limit))
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


def _file_limit_message(path: Path, limit: int) -> str:
    if path.name.lower().endswith((".gz", ".zst", ".parquet")):
        seen = f"decompresses to more than {limit} bytes"
    else:
        seen = f"has {path.stat().st_size} bytes"
    return (
        f"{path.name} {seen}, over the per-file limit of {limit} bytes (corpus_ingest_max_file_bytes): "
        "reading stopped there, the documents before it are kept"
    )


def _doc_limit_message(where: str, limit: int, seen: str) -> str:
    return f"{where}: {seen}, over the per-document limit of {limit} bytes (corpus_ingest_max_doc_bytes), skipped"


def _open_binary(path: Path, limit: int) -> IO[bytes]:
    """``path`` decompressed, read in large chunks; FileLimitExceeded past ``limit`` bytes."""
    name = path.name.lower()
    inner: IO[bytes]
    if name.endswith(".gz"):
        inner = gzip.open(path, "rb")  # type: ignore[assignment]
    elif name.endswith(".zst"):
        import zstandard  # optional: only needed for .zst sources

        inner = zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True)  # type: ignore[assignment]
    else:
        inner = open(path, "rb", buffering=0)
    return io.BufferedReader(_LimitedReader(inner, limit), buffer_size=_CHUNK)


def _read_upto(stream: Any, limit: int) -> bytes:
    """At most ``limit`` + 1 bytes of ``stream`` (to its end when shorter), read in chunks."""
    parts: list[bytes] = []
    size = 0
    while size <= limit:
        part = stream.read(min(_CHUNK, limit + 1 - size))
        if not part:
            break
        parts.append(part)
        size += len(part)
    return b"".join(parts)


def _read_jsonl(path: Path, report: FileReport, limits: ReadLimits) -> Iterator[RawDoc]:
    try:
        with _open_binary(path, limits.file_bytes) as f:
            for lineno, line in enumerate(_bounded_lines(f, limits.doc_bytes), 1):
                if line is None:
                    seen = f"line {lineno} is longer than {limits.doc_bytes} bytes"
                    report.error("gigantic_line", _doc_limit_message(path.name, limits.doc_bytes, seen))
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


def _read_txt(path: Path, report: FileReport, limits: ReadLimits) -> Iterator[RawDoc]:
    split_at = min(limits.txt_doc_bytes, limits.doc_bytes)
    with _open_binary(path, limits.file_bytes) as f:
        if path.stat().st_size <= split_at:  # small: one document, unless decoding made it larger
            data = f.read()
            text = _decode(data, report, path.name)
            if len(text.encode()) <= split_at:
                yield RawDoc(id=path.name, text=text, source=str(path))
                return
            paragraphs: Iterator[bytes] = iter(data.split(b"\n\n"))
        else:
            paragraphs = _paragraphs(f, path, report, limits.doc_bytes)
        # Paragraphs are grouped into documents of at most ``split_at`` bytes, as they are read.
        chunk: list[bytes] = []
        size = part = 0
        for block in paragraphs:
            if chunk and size + len(block) > split_at:
                yield _txt_doc(path, part, chunk, report)
                chunk, size, part = [], 0, part + 1
            chunk.append(block)
            size += len(block) + 2
        if chunk:
            yield _txt_doc(path, part, chunk, report)


def _txt_doc(path: Path, part: int, paragraphs: list[bytes], report: FileReport) -> RawDoc:
    text = _decode(b"\n\n".join(paragraphs), report, f"{path.name}#{part}")
    return RawDoc(id=f"{path.name}#{part}", text=text, source=str(path))


def _paragraphs(f: IO[bytes], path: Path, report: FileReport, max_bytes: int) -> Iterator[bytes]:
    """The blank-line separated paragraphs of ``f``, read a chunk at a time.

    A paragraph longer than ``max_bytes`` is cut at its last line end before that size (a text
    with no blank lines is still split); a single line longer than that is skipped and counted.
    Splitting bytes at newlines is safe in UTF-8: a newline byte never occurs inside a character.
    """
    pending = b""
    skipping = False  # inside a line over the limit: drop bytes up to its end
    while chunk := f.read(_CHUNK):
        if skipping:
            end = chunk.find(b"\n")
            if end < 0:
                continue
            chunk, skipping = chunk[end + 1 :], False
        *blocks, pending = (pending + chunk).split(b"\n\n")
        yield from blocks
        while len(pending) > max_bytes:
            cut = pending.rfind(b"\n", 0, max_bytes)
            if cut >= 0:
                if cut:
                    yield pending[:cut]
                pending = pending[cut + 1 :]
                continue
            seen = f"a line of more than {max_bytes} bytes"
            report.error("document_too_large", _doc_limit_message(path.name, max_bytes, seen))
            end = pending.find(b"\n")
            pending, skipping = (pending[end + 1 :], False) if end >= 0 else (b"", True)
    if pending:
        yield pending


def _bounded_lines(f: IO[bytes], max_bytes: int) -> Iterator[bytes | None]:
    """Lines of ``f``; None for a line over ``max_bytes`` (read past in chunks, never held whole)."""
    while True:
        line = f.readline(max_bytes + 1)
        if not line:
            return
        if len(line) > max_bytes and not line.endswith(b"\n"):
            while (rest := f.readline(_CHUNK)) and not rest.endswith(b"\n"):
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


def _read_html(path: Path, report: FileReport, limits: ReadLimits, defer: bool = False) -> Iterator[RawDoc]:
    try:
        with _open_binary(path, limits.file_bytes) as f:
            data = _read_upto(f, limits.doc_bytes)
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        report.error("truncated_or_corrupt", f"{type(exc).__name__}: {exc}")
        return
    if len(data) > limits.doc_bytes:  # the page is one document: decompressed no further than this
        if path.name.lower().endswith(".gz"):
            seen = f"the page decompresses to more than {limits.doc_bytes} bytes"
        else:
            seen = f"the page has {path.stat().st_size} bytes"
        report.error("document_too_large", _doc_limit_message(path.name, limits.doc_bytes, seen))
        return
    doc = _html_doc(data, path.name, str(path), None, report, defer)
    if doc is not None:
        yield doc


def _read_parquet(path: Path, report: FileReport, limits: ReadLimits) -> Iterator[RawDoc]:
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
    # Row groups are decompressed whole: read only those within the per-file limit (by the footer).
    row_groups: list[int] = []
    unpacked = 0
    for i in range(pf.metadata.num_row_groups):
        unpacked += pf.metadata.row_group(i).total_byte_size
        if unpacked > limits.file_bytes:
            report.error("file_too_large", _file_limit_message(path, limits.file_bytes))
            break
        row_groups.append(i)
    row = 0
    try:
        for batch in pf.iter_batches(batch_size=_PARQUET_BATCH, row_groups=row_groups, columns=columns):
            for rec in batch.to_pylist():
                row += 1
                text = rec.get("text")
                if not isinstance(text, str):
                    report.error("missing_text", f"row {row}: 'text' is not a string")
                    continue
                # len() is free; encoding only for a text that might be over the limit
                if len(text) * 4 > limits.doc_bytes and len(text.encode()) > limits.doc_bytes:
                    seen = f"row {row} has {len(text.encode())} bytes of text"
                    report.error("document_too_large", _doc_limit_message(path.name, limits.doc_bytes, seen))
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


def _gzip_damage(path: Path, limit: int) -> str | None:
    """Why a gzip file does not decompress to its end (or to ``limit`` bytes), or None (a streaming
    pass, no memory)."""
    try:
        with gzip.open(path, "rb") as g:
            seen = 0
            while (n := len(g.read(_CHUNK))) and seen <= limit:
                seen += n
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _read_warc(path: Path, report: FileReport, limits: ReadLimits, defer: bool = False) -> Iterator[RawDoc]:
    from warcio.archiveiterator import ArchiveIterator

    if path.name.lower().endswith(".gz") and (damage := _gzip_damage(path, limits.file_bytes)):
        # warcio stops quietly at a cut gzip member: record it, then salvage the records before it.
        report.error("truncated_or_corrupt", damage)
    n = 0
    unpacked = 0  # the records' declared lengths: what warcio decompresses (it reads by them)
    try:
        with open(path, "rb") as f:
            # Digests catch what warcio otherwise tolerates: a record cut short by a truncated file.
            for record in ArchiveIterator(f, check_digests=True):
                unpacked += record.length or 0
                if unpacked > limits.file_bytes:
                    raise FileLimitExceeded(limits.file_bytes)
                if record.rec_type != "response":
                    continue
                ctype = (record.http_headers.get_header("Content-Type") or "") if record.http_headers else ""
                if "html" not in ctype.lower():
                    continue
                n += 1
                url = record.rec_headers.get_header("WARC-Target-URI")
                rec_id = record.rec_headers.get_header("WARC-Record-ID") or f"{path.name}:{n}"
                # Bounded after the body's own Content-Encoding is undone; warcio skips the rest in chunks.
                data = _read_upto(record.content_stream(), limits.doc_bytes)
                if len(data) > limits.doc_bytes:
                    seen = f"record {n} ({url}) has a body of more than {limits.doc_bytes} bytes"
                    report.error("document_too_large", _doc_limit_message(path.name, limits.doc_bytes, seen))
                    continue
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
    except FileLimitExceeded:
        raise
    except Exception as exc:  # warcio raises ArchiveLoadFailed / zlib errors on a damaged file
        report.error("truncated_or_corrupt", f"after record {n}: {type(exc).__name__}: {exc}")
