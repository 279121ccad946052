"""The last stage: input shards + decisions → kept shards, removed shards, the index and the manifest.

One pass over the input in order, so the output depends only on the input, the options and the
decisions: the single-process run and the distributed run write the same dataset.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from contracts.events import DedupOptions
from services.dedup.core.inputs import is_parquet, parquet_records, parse, raw_lines
from services.dedup.core.spans import SpanDeduplicator
from services.dedup.core.stages import Decision, ShardSignatures, tokens_estimate
from shared.shards import ShardWriter

MANIFEST = "manifest.json"
INDEX = "index/index.npz"
OUTPUT_SHARD_DOCS = 10_000

Source = tuple[str | None, list[Path], int | None]  # (dataset id, shard files, documents when known)


def output_format(options: DedupOptions, shards: list[Path]) -> str:
    """The asked format, else that of the input: zstd or Parquet when every shard is, else gzip."""
    if options.output_format:
        return options.output_format
    if shards and all(s.name.endswith(".zst") for s in shards):
        return "jsonl.zst"
    if shards and all(is_parquet(s) for s in shards):
        return "parquet"
    return "jsonl.gz"


def _documents(shard: Path) -> Iterator[tuple[bytes | None, dict[str, Any] | None, int]]:
    """(raw JSON line or None, record or None, line/row number): JSON lines stay unparsed."""
    if is_parquet(shard):
        for row, rec in enumerate(parquet_records(shard), 1):
            yield None, rec, row
    else:
        for lineno, line in raw_lines(shard):
            yield line, None, lineno


def rewrite(
    sources: list[Source],
    shards: list[Path],
    parts: list[ShardSignatures],
    decisions: dict[int, Decision],
    out_dir: Path,
    dataset_id: str,
    inputs: list[str],
    o: DedupOptions,
    cstats: dict[str, int],
    signature_options: dict[str, Any],
) -> dict[str, Any]:
    for sub in ("data", "removed", "index"):
        shutil.rmtree(out_dir / sub, ignore_errors=True)
    fmt = output_format(o, shards)
    kept_w = ShardWriter(out_dir / "data", "part", OUTPUT_SHARD_DOCS, out_dir, fmt)
    removed_w = ShardWriter(out_dir / "removed", "removed", OUTPUT_SHARD_DOCS, out_dir, fmt)
    copy_lines = not fmt == "parquet"  # a kept JSON line goes out as it came in
    spans = SpanDeduplicator(o.line_dedup, o.paragraph_dedup, o.min_span_chars)
    ids = [i for p in parts for i in p.ids]
    kept_rows: list[int] = []
    counts = {"exact": 0, "near": 0, "exact_prior": 0, "near_prior": 0, "spans_emptied": 0}
    text_bytes = tokens = 0
    nbytes = np.concatenate(
        [p.nbytes if p.nbytes is not None else np.zeros(len(p.ids), np.int64) for p in parts]
    )
    ntoks = np.concatenate(
        [p.tokens if p.tokens is not None else np.zeros(len(p.ids), np.int64) for p in parts]
    )
    i = 0
    for shard in shards:
        for line, rec, lineno in _documents(shard):
            d = decisions.get(i)
            if d is None and not spans.active:  # the common case: no change to the record
                if line is not None and copy_lines:
                    kept_w.write_line(line)
                else:
                    kept_w.write(rec if rec is not None else parse(shard, lineno, line))  # type: ignore[arg-type]
                kept_rows.append(i)
                text_bytes += int(nbytes[i])
                tokens += int(ntoks[i])
                i += 1
                continue
            if rec is None:
                rec = parse(shard, lineno, line)  # type: ignore[arg-type]
            if d is None:
                text, removed_spans = spans.apply(rec["text"])
                if not text.strip():
                    counts["spans_emptied"] += 1
                    removed_w.write(
                        {"id": ids[i], "reason": "spans", "source": rec.get("source"), "text": rec["text"]}
                    )
                else:
                    if removed_spans:
                        rec = {**rec, "text": text, "dedup_spans_removed": removed_spans}
                    kept_w.write(rec)
                    kept_rows.append(i)
                    text_bytes += len(text.encode())
                    tokens += tokens_estimate(rec)
            else:
                counts[d.reason] += 1
                removed_w.write(
                    {
                        "id": ids[i],
                        "reason": d.reason,
                        "cluster_id": d.cluster_id,
                        "kept_id": d.kept_id,
                        "jaccard": d.jaccard,
                        "source": rec.get("source"),
                        "text": rec["text"],
                    }
                )
            i += 1
    all_keys = [k for p in parts for k in p.keys]
    sigs = np.concatenate([p.sigs for p in parts])
    index_path = out_dir / INDEX
    index_path.parent.mkdir(parents=True, exist_ok=True)
    ShardSignatures([ids[r] for r in kept_rows], [all_keys[r] for r in kept_rows], sigs[kept_rows]).save(
        index_path
    )
    n = i
    after_exact = n - counts["exact"] - counts["exact_prior"]
    after_near = after_exact - counts["near"] - counts["near_prior"]
    manifest = {
        "dataset_id": dataset_id,
        "kind": "corpus",
        "produced_by": "dedup",
        "format": fmt,
        "source_datasets": [sid for sid, _, _ in sources if sid],
        "inputs": inputs,
        "options": o.model_dump(mode="json"),
        "shards": kept_w.close(),
        "removed_shards": removed_w.close(),
        "index": {"path": INDEX, "documents": len(kept_rows), "signature_options": signature_options},
        "documents": kept_w.documents,
        "bytes": text_bytes,
        "token_estimate": tokens,
        "stats": {
            "documents_in": n,
            "documents_out": kept_w.documents,
            "exact_duplicates": counts["exact"] + counts["exact_prior"],
            "near_duplicates": counts["near"] + counts["near_prior"],
            "prior_exact_duplicates": counts["exact_prior"],
            "prior_near_duplicates": counts["near_prior"],
            **cstats,
            **spans.stats(),
            "span_emptied_documents": counts["spans_emptied"],
        },
        "stages": [
            {"stage": "exact_dedup", "docs_in": n, "docs_out": after_exact},
            {"stage": "near_dedup", "docs_in": after_exact, "docs_out": after_near},
            {"stage": "span_dedup", "docs_in": after_near, "docs_out": kept_w.documents},
        ],
    }
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False))
    return manifest
