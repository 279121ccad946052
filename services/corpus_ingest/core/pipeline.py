"""The ingest pipeline: sources → documents → normalise → quality → language → shards + manifest.

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
from pathlib import Path
from typing import Any

from contracts.events import IngestOptions
from services.corpus_ingest.core.extract import extract_html
from services.corpus_ingest.core.langid import DEFAULT_DETECTOR_LANGUAGES, LanguageIdentifier
from services.corpus_ingest.core.normalize import normalize_text
from services.corpus_ingest.core.quality import (
    DEFAULT_SAFETY_KEYWORDS,
    FILTER_STAGES,
    compute_signals,
    quality_failure,
    safety_failure,
    token_estimate,
    url_failure,
)
from services.corpus_ingest.core.readers import FileReport, RawDoc, expand_sources, file_format, read_file
from shared.shards import ShardWriter

Progress = Callable[..., None]  # (stage, fraction, message="", **metrics)
STAGES = ("read", "normalize", *FILTER_STAGES, "language", "safety")
MANIFEST = "manifest.json"


_WINDOW = 64  # documents read ahead while their HTML is extracted in the pool


class IngestInputError(ValueError):
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


def run_ingest(
    sources: list[str],
    out_dir: Path,
    dataset_id: str,
    options: IngestOptions | None = None,
    detector_languages: tuple[str, ...] | list[str] = DEFAULT_DETECTOR_LANGUAGES,
    txt_max_doc_bytes: int = 1 << 20,
    progress: Progress | None = None,
    workers: int = 1,
) -> dict[str, Any]:
    """Ingest ``sources`` into ``out_dir`` (replacing what a previous run left there); returns the manifest.

    With ``workers`` > 1, HTML extraction (most of the cost) runs in that many processes.
    """
    options = options or IngestOptions()
    files, missing = expand_sources(sources)
    if missing:
        raise IngestInputError(f"sources not found or empty: {', '.join(missing)}")
    allowed = {c.lower() for c in options.languages}
    langid = LanguageIdentifier(tuple(detector_languages) + tuple(allowed))
    out_dir.mkdir(parents=True, exist_ok=True)
    for sub in ("data", "excluded"):  # a rerun overwrites: no stale shard of the last run survives
        shutil.rmtree(out_dir / sub, ignore_errors=True)
    fmt = options.output_format
    kept = ShardWriter(out_dir / "data", "part", options.shard_docs, out_dir, fmt)
    excluded = ShardWriter(out_dir / "excluded", "excluded", options.shard_docs, out_dir, fmt)
    keywords = tuple(
        options.safety_keywords if options.safety_keywords is not None else DEFAULT_SAFETY_KEYWORDS
    )
    passed: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    rules: Counter[str] = Counter()
    langs: Counter[str] = Counter()
    reports: list[FileReport] = []
    seen_ids: Counter[str] = Counter()
    text_bytes = tokens = 0

    def exclude(doc: dict[str, Any], filt: str, reason: str, rule: str | None = None) -> None:
        reasons[filt] += 1
        rules[f"{filt}.{rule or filt}"] += 1
        excluded.write({**doc, "filter": filt, "rule": rule or filt, "reason": reason})

    def process_file(stream: Iterator[RawDoc], report: FileReport) -> None:
        nonlocal text_bytes, tokens
        for raw in stream:
            report.documents += 1
            passed["read"] += 1
            seen_ids[raw.id] += 1  # ids must be unique in the dataset: suffix repeats
            doc_id = raw.id if seen_ids[raw.id] == 1 else f"{raw.id}~{seen_ids[raw.id] - 1}"
            text = normalize_text(raw.text)
            doc: dict[str, Any] = {
                "id": doc_id,
                "text": text,
                "source": raw.source,
                "url": raw.url,
                "meta": raw.meta,
            }
            if not text:
                exclude(doc, "normalize", "empty after normalisation")
                continue
            passed["normalize"] += 1
            blocked = url_failure(raw.url, options) if "url" in options.filters else None
            if blocked:
                exclude(doc, "url", blocked)
                continue
            signals = compute_signals(text, keywords)
            doc["signals"] = signals
            failure = quality_failure(signals, options)
            if failure:
                exclude(doc, failure[0], failure[2], failure[1])
                continue
            lang, score = langid.identify(text)
            doc["lang"], doc["lang_score"] = lang, score
            if lang not in allowed or score < options.min_language_score:
                exclude(
                    doc,
                    "language",
                    f"language {lang} (score {score}) not in {sorted(allowed)} "
                    f"with score >= {options.min_language_score}",
                )
                continue
            unsafe = safety_failure(signals, options)
            if unsafe:
                exclude(doc, "safety", unsafe)
                continue
            passed["safety"] += 1
            langs[lang] += 1
            text_bytes += len(text.encode())
            tokens += token_estimate(signals)
            kept.write(doc)

    pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("forkserver")) if workers > 1 else None
    try:
        for i, path in enumerate(files):
            report = FileReport(path=str(path), format=file_format(path) or "unknown")
            reports.append(report)
            stream = read_file(path, report, txt_max_doc_bytes, defer_html=pool is not None)
            process_file(extracted(stream, report, pool), report)
            if progress:
                progress(
                    "ingest",
                    (i + 1) / len(files),
                    f"{i + 1}/{len(files)} files",
                    documents=float(kept.documents),
                )
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    shards, excluded_shards = kept.close(), excluded.close()
    if passed["read"] == 0:
        errors = "; ".join(f"{r.path}: {dict(r.errors) or 'no documents'}" for r in reports)
        raise IngestInputError(f"no readable documents in {', '.join(sources)} ({errors})")
    stages, docs_in = [], passed["read"]
    # Each stage passes its survivors to the next: a stage's output is its input less its exclusions.
    for stage in STAGES:
        out = passed[stage] if stage in ("read", "normalize") else docs_in - reasons[stage]
        stages.append({"stage": stage, "docs_in": docs_in, "docs_out": out})
        docs_in = out
    manifest = {
        "dataset_id": dataset_id,
        "kind": "corpus",
        "produced_by": "corpus_ingest",
        "format": fmt,
        "fields": ["id", "text", "lang", "lang_score", "source", "url", "meta", "signals"],
        "sources": sources,
        "options": options.model_dump(mode="json"),
        "shards": shards,
        "excluded_shards": excluded_shards,
        "documents": kept.documents,
        "excluded_documents": excluded.documents,
        "bytes": text_bytes,
        "token_estimate": tokens,
        "languages": dict(sorted(langs.items())),
        "stages": stages,
        "exclusions_by_filter": dict(sorted(reasons.items())),
        "exclusions_by_rule": dict(sorted(rules.items())),
        "files": [r.as_dict() for r in reports],
        "file_errors": sum(sum(r.errors.values()) for r in reports),
    }
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False))
    return manifest
