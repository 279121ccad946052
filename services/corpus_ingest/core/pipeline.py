"""The ingest pipeline: sources → documents → the blocks (normalise, filters, language) → shards + manifest.

Output folder layout (the dataset)::

    manifest.json                  dataset id, shards + sha256, counts, retention per stage, per-file errors
    data/part-00000.jsonl.gz       (or .jsonl.zst) kept documents: id, text, lang, lang_score, source, url, meta, signals
    excluded/excluded-00000.jsonl.gz  every removed document with the filter and reason
"""

from __future__ import annotations

import json
import multiprocessing as mp
import shutil
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from contracts.events import IngestOptions
from services.corpus_ingest.core.blocks import Document, Drop, Pipeline
from services.corpus_ingest.core.extract import extract_html
from services.corpus_ingest.core.filters import ingest_blocks
from services.corpus_ingest.core.langid import DEFAULT_DETECTOR_LANGUAGES, LanguageIdentifier
from services.corpus_ingest.core.readers import (
    FileReport,
    RawDoc,
    ReadLimits,
    expand_sources,
    file_format,
    read_file,
)
from services.corpus_ingest.core.signals import token_estimate
from shared.errors import Refusal
from shared.shards import ShardWriter

Progress = Callable[..., None]  # (stage, fraction, message="", **metrics)
MANIFEST = "manifest.json"
FIELDS = ("id", "text", "lang", "lang_score", "source", "url", "meta", "signals")
_WINDOW = 64  # documents read ahead while their HTML is extracted in the pool


class IngestInputError(Refusal):
    """The request can never succeed: missing sources, or no readable document in any of them."""


def extracted(stream: Iterator[RawDoc], report: FileReport, pool: Executor | None) -> Iterator[RawDoc]:
    """``stream`` with deferred HTML extracted (in ``pool`` when given), in order; pages without
    main text are counted in ``report`` and left out."""
    window: list[RawDoc] = []

    def flush() -> Iterator[RawDoc]:
        pages = [d.html for d in window if d.html is not None]
        texts = iter(
            pool.map(extract_html, pages, chunksize=4) if pool and pages else map(extract_html, pages)
        )
        for d in window:
            if d.html is not None:
                text = next(texts)
                if text is None:
                    report.error("no_main_text", f"{d.id}: no main text found")
                    continue
                d.text, d.html = text, None
            yield d
        window.clear()

    for doc in stream:
        window.append(doc)
        if len(window) >= _WINDOW:
            yield from flush()
    yield from flush()


def documents(stream: Iterator[RawDoc], report: FileReport, seen_ids: Counter[str]) -> Iterator[Document]:
    """The documents of one file, counted in ``report``; an id seen before gets a ``~n`` suffix
    (ids are unique in the dataset)."""
    for raw in stream:
        report.documents += 1
        seen_ids[raw.id] += 1
        doc_id = raw.id if seen_ids[raw.id] == 1 else f"{raw.id}~{seen_ids[raw.id] - 1}"
        yield Document(doc_id, raw.text, raw.source, raw.url, raw.meta)


class DatasetWriter:
    """Kept and excluded shards of one output folder, and what the manifest counts of the kept."""

    def __init__(self, out_dir: Path, options: IngestOptions) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        for sub in ("data", "excluded"):  # a rerun overwrites: no stale shard of the last run survives
            shutil.rmtree(out_dir / sub, ignore_errors=True)
        fmt, per_shard = options.output_format, options.shard_docs
        self.kept = ShardWriter(out_dir / "data", "part", per_shard, out_dir, fmt)
        self.excluded = ShardWriter(out_dir / "excluded", "excluded", per_shard, out_dir, fmt)
        self.languages: Counter[str] = Counter()
        self.text_bytes = self.tokens = 0
        self.shards: list[dict[str, Any]] = []
        self.excluded_shards: list[dict[str, Any]] = []

    def write(self, doc: Document, drop: Drop | None) -> None:
        if drop is not None:
            self.excluded.write(
                {**doc.record(), "filter": drop.filter, "rule": drop.rule, "reason": drop.reason}
            )
            return
        assert doc.lang is not None and doc.signals is not None  # every block ran
        self.languages[doc.lang] += 1
        self.text_bytes += len(doc.text.encode())
        self.tokens += token_estimate(doc.signals)
        self.kept.write(doc.record())

    def close(self) -> None:
        self.shards, self.excluded_shards = self.kept.close(), self.excluded.close()

    def manifest(
        self,
        dataset_id: str,
        sources: list[str],
        options: IngestOptions,
        pipeline: Pipeline,
        reports: list[FileReport],
    ) -> dict[str, Any]:
        """The dataset's manifest, once the shards are closed."""
        return {
            "dataset_id": dataset_id,
            "kind": "corpus",
            "produced_by": "corpus_ingest",
            "format": options.output_format,
            "fields": list(FIELDS),
            "sources": sources,
            "options": options.model_dump(mode="json"),
            "shards": self.shards,
            "excluded_shards": self.excluded_shards,
            "documents": self.kept.documents,
            "excluded_documents": self.excluded.documents,
            "bytes": self.text_bytes,
            "token_estimate": self.tokens,
            "languages": dict(sorted(self.languages.items())),
            "stages": pipeline.retention(),
            "exclusions_by_filter": dict(sorted(pipeline.drops_by_filter.items())),
            "exclusions_by_rule": dict(sorted(pipeline.drops_by_rule.items())),
            "files": [r.as_dict() for r in reports],
            "file_errors": sum(sum(r.errors.values()) for r in reports),
        }


@contextmanager
def extraction_pool(workers: int) -> Iterator[Executor | None]:
    """Processes extracting HTML when ``workers`` > 1 (forkserver: the service runs beside an event loop)."""
    if workers <= 1:
        yield None
        return
    pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("forkserver"))
    try:
        yield pool
    finally:
        pool.shutdown(cancel_futures=True)


def run_ingest(
    sources: list[str],
    out_dir: Path,
    dataset_id: str,
    options: IngestOptions | None = None,
    detector_languages: tuple[str, ...] | list[str] = DEFAULT_DETECTOR_LANGUAGES,
    limits: ReadLimits | None = None,
    progress: Progress | None = None,
    workers: int = 1,
) -> dict[str, Any]:
    """Ingest ``sources`` into ``out_dir`` (replacing what a previous run left there); returns the manifest.

    With ``workers`` > 1, HTML extraction (most of the cost) runs in that many processes. A file
    over a per-document or per-file limit is a file error in the manifest; sources larger in all
    than ``limits.job_bytes`` are refused before any work.
    """
    options = options or IngestOptions()
    limits = limits or ReadLimits()
    files, missing = expand_sources(sources)
    if missing:
        raise IngestInputError(f"sources not found or empty: {', '.join(missing)}")
    total = sum(path.stat().st_size for path in files)
    if total > limits.job_bytes:
        raise IngestInputError(
            f"sources hold {total} bytes in {len(files)} files, over the job limit of {limits.job_bytes} "
            "bytes (corpus_ingest_max_job_bytes): split them over several jobs"
        )
    identifier = LanguageIdentifier(tuple(detector_languages) + tuple(c.lower() for c in options.languages))
    pipeline = Pipeline(ingest_blocks(options, identifier), options.filters)
    out = DatasetWriter(out_dir, options)
    reports = [FileReport(path=str(path), format=file_format(path) or "unknown") for path in files]
    seen_ids: Counter[str] = Counter()
    with extraction_pool(workers) as pool:
        for i, (path, report) in enumerate(zip(files, reports, strict=True)):
            stream = read_file(path, report, limits, defer_html=pool is not None)
            for doc in documents(extracted(stream, report, pool), report, seen_ids):
                out.write(doc, pipeline.check(doc))
            if progress:
                done = f"{i + 1}/{len(files)} files"
                progress("ingest", (i + 1) / len(files), done, documents=float(out.kept.documents))
    out.close()
    if pipeline.documents_in == 0:
        errors = "; ".join(f"{r.path}: {dict(r.errors) or 'no documents'}" for r in reports)
        raise IngestInputError(f"no readable documents in {', '.join(sources)} ({errors})")
    manifest = out.manifest(dataset_id, sources, options, pipeline, reports)
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False))
    return manifest
