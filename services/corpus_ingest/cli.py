"""Standalone commands (``puyu corpus extract`` / ``puyu corpus ingest``): the same core, no bus."""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path

from contracts.events import IngestOptions
from services.corpus_ingest.core import IngestInputError, run_ingest
from services.corpus_ingest.core.normalize import normalize_text
from services.corpus_ingest.core.readers import FileReport, expand_sources, file_format, read_file
from shared.progress import progress_bar


def extract_cmd(paths: list[str]) -> int:
    """Print one ``{"path", "text"}`` JSON line per document found in ``paths`` (extracted, normalised)."""
    files, missing = expand_sources(paths)
    for m in missing:
        print(f"not found: {m}", file=sys.stderr)
    for path in files:
        report = FileReport(path=str(path), format=file_format(path) or "unknown")
        for doc in read_file(path, report):
            print(json.dumps({"path": str(path), "text": normalize_text(doc.text)}, ensure_ascii=False))
        for sample in report.samples:
            print(f"{path}: {sample}", file=sys.stderr)
    return 1 if missing else 0


def ingest_cmd(
    sources: list[str],
    out_dir: str | Path,
    options: IngestOptions | None = None,
    dataset_id: str | None = None,
    workers: int = 1,
    show_progress: bool | None = None,
) -> int:
    """Ingest ``sources`` into ``out_dir`` and print a JSON summary; returns the exit status.

    ``workers`` > 1 extracts HTML in that many processes; the progress bar shows on a terminal.
    """
    out = Path(out_dir)
    dataset_id = dataset_id or f"{out.name or 'corpus'}-{uuid.uuid4().hex[:8]}"
    try:
        with progress_bar("ingest", show_progress) as progress:
            m = run_ingest(sources, out, dataset_id, options, progress=progress, workers=workers)
    except IngestInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary = {
        k: m[k]
        for k in (
            "dataset_id",
            "documents",
            "excluded_documents",
            "bytes",
            "token_estimate",
            "languages",
            "exclusions_by_filter",
            "exclusions_by_rule",
            "file_errors",
        )
    }
    summary["manifest"] = str(out / "manifest.json")
    summary["retention"] = {s["stage"]: f"{s['docs_out']}/{s['docs_in']}" for s in m["stages"]}
    print(json.dumps(summary, ensure_ascii=False))
    return 0
