"""Source readers: paths, globs and folders of .jsonl(.gz/.zst), .txt and .html files.

- ``.jsonl`` (optionally ``.gz`` / ``.zst``): one JSON object per line with a ``text`` string and
  optional ``id``, ``url``, ``meta``.
- ``.txt``: the whole file is one document; a file larger than ``txt_max_doc_bytes`` is split at
  blank lines into documents of at most about that size (a book dump is not one training doc).
- ``.html`` / ``.htm``: main text by ``trafilatura.extract`` with precision-oriented settings; the
  url from ``<link rel="canonical">``, the title into ``meta``.

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

JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".ndjson", ".ndjson.gz")
TXT_SUFFIXES = (".txt",)
HTML_SUFFIXES = (".html", ".htm")
SUPPORTED = JSONL_SUFFIXES + TXT_SUFFIXES + HTML_SUFFIXES
_MAX_SAMPLES = 5


@dataclass
class RawDoc:
    id: str
    text: str
    source: str
    url: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


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
    for fmt, suffixes in (("jsonl", JSONL_SUFFIXES), ("txt", TXT_SUFFIXES), ("html", HTML_SUFFIXES)):
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


def read_file(path: Path, report: FileReport, txt_max_doc_bytes: int = 1 << 20) -> Iterator[RawDoc]:
    try:
        if path.stat().st_size == 0:
            report.error("empty_file", "file has no bytes")
            return
        if report.format == "jsonl":
            yield from _read_jsonl(path, report)
        elif report.format == "txt":
            yield from _read_txt(path, report, txt_max_doc_bytes)
        elif report.format == "html":
            yield from _read_html(path, report)
        else:
            report.error("unsupported_format", f"{path.name}: not one of {', '.join(SUPPORTED)}")
    except OSError as exc:
        report.error("unreadable", str(exc))


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
            for lineno, line in enumerate(f, 1):
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


def _read_html(path: Path, report: FileReport) -> Iterator[RawDoc]:
    data = path.read_bytes()
    text = extract_html(data)
    if text is None:
        report.error("no_main_text", f"{path.name}: trafilatura found no main text")
        return
    url, title = html_metadata(data)
    yield RawDoc(id=path.name, text=text, source=str(path), url=url, meta={"title": title} if title else {})


def extract_html(data: bytes | str) -> str | None:
    import trafilatura  # heavy import: only when HTML is read

    # Precision first: boilerplate in a pretraining corpus costs more than a lost paragraph.
    return trafilatura.extract(  # type: ignore[no-any-return]
        data,
        favor_precision=True,
        include_comments=False,
        include_tables=True,
        include_images=False,
        include_links=False,
        deduplicate=False,
    )


def html_metadata(data: bytes) -> tuple[str | None, str | None]:
    """(canonical url, title) from the page head; (None, None) when it does not parse."""
    import lxml.html

    try:
        tree = lxml.html.fromstring(data)
    except Exception:  # lxml raises ParserError/ValueError on empty or odd documents
        return None, None
    hrefs = tree.xpath('//link[translate(@rel, "CANONICAL", "canonical")="canonical"]/@href')
    titles = tree.xpath("//title/text()")
    url = str(hrefs[0]).strip() if hrefs else None
    title = str(titles[0]).strip() if titles else None
    return url or None, title or None
