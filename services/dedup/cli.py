"""Standalone command (``puyu corpus dedup``): the same core as the service, no bus."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from contracts.events import DedupOptions
from services.dedup.core import DedupInputError, run_dedup
from shared.progress import progress_bar


def dedup_cmd(
    dirs: list[str],
    out_dir: str | Path,
    options: DedupOptions | None = None,
    dataset_id: str | None = None,
    workers: int = 1,
    show_progress: bool | None = None,
) -> int:
    """Deduplicate the datasets (or jsonl folders) ``dirs`` into ``out_dir``; print a JSON summary.

    ``workers`` > 1 computes the shards' signatures in that many processes; a run killed midway
    and started again with the same arguments reuses the shards it had finished.
    """
    out = Path(out_dir)
    try:
        with progress_bar("dedup", show_progress) as progress:
            m = run_dedup(
                [Path(d) for d in dirs], out, dataset_id or out.name or "dedup", options, progress, workers
            )
    except DedupInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"dataset_id": m["dataset_id"], "manifest": str(out / "manifest.json"), **m["stats"]}))
    return 0
