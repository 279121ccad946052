"""Dedup pipeline over one or more datasets: signatures per shard → clusters → rewrite + index.

Output folder layout::

    manifest.json                      dataset id, shards + sha256, stats, retention per stage
    data/part-00000.jsonl.gz           kept documents (records unchanged but for removed spans)
    removed/removed-00000.jsonl.gz     removed documents: reason, cluster id, kept doc id, Jaccard
    index/index.npz                    ids, exact keys and signatures of the kept documents: the
                                       persisted index a later dataset is deduplicated against
    .work/sig-*.npz                    stage-1 results (resume: a finished shard is not redone)
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import shutil
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from contracts.events import DedupOptions
from services.dedup.core.spans import SpanDeduplicator
from services.dedup.core.stages import (
    DedupInputError,
    ShardSignatures,
    cluster,
    parse,
    raw_lines,
    shard_signatures,
    tokens_estimate,
)
from shared.shards import ShardWriter

Progress = Callable[..., None]  # (stage, fraction, message="", **metrics)
MANIFEST = "manifest.json"
INDEX = "index/index.npz"
_SHARD_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst")
# Options that change signatures: an index built with others cannot be compared against.
_SIGNATURE_OPTIONS = ("exact", "near", "shingle_size", "bands", "rows", "seed")

__all__ = ["DedupInputError", "input_shards", "load_prior_index", "run_dedup", "signature_key"]


def input_shards(folder: Path) -> tuple[str | None, list[Path], int | None]:
    """(dataset id, shard files, documents when known) of a dataset folder (manifest) or a folder of jsonl."""
    manifest_path = folder / MANIFEST
    if manifest_path.is_file():
        try:
            m = json.loads(manifest_path.read_text())
            shards = [folder / s["path"] for s in m["shards"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise DedupInputError(f"{manifest_path}: not a dataset manifest ({exc})") from exc
        missing = [str(s) for s in shards if not s.is_file()]
        if missing:
            raise DedupInputError(f"{manifest_path}: shards missing: {', '.join(missing)}")
        return m.get("dataset_id"), shards, m.get("documents")
    if folder.is_dir():
        files = sorted(
            p for p in folder.rglob("*") if p.name.endswith(_SHARD_SUFFIXES) and ".work" not in p.parts
        )
        return None, files, None
    raise DedupInputError(f"dataset folder not found: {folder}")


def signature_key(shard: Path, options: DedupOptions) -> str:
    """Names a shard's stage-1 result: changes when the shard or the signature options change."""
    st = shard.stat()
    sig_opts = {k: getattr(options, k) for k in _SIGNATURE_OPTIONS}
    raw = json.dumps([str(shard.resolve()), st.st_size, st.st_mtime_ns, sig_opts], sort_keys=True)
    return hashlib.sha256(raw.encode()).hexdigest()[:24]


def load_prior_index(folders: list[str], options: DedupOptions) -> ShardSignatures | None:
    """The persisted indexes of earlier dedup outputs, concatenated; None when there are none."""
    parts: list[ShardSignatures] = []
    want = {k: getattr(options, k) for k in _SIGNATURE_OPTIONS}
    for f in folders:
        folder = Path(f.removeprefix("file://"))
        manifest_path = folder / MANIFEST
        try:
            m = json.loads(manifest_path.read_text())
            index_path = folder / m["index"]["path"]
            have = {k: m["index"]["signature_options"][k] for k in _SIGNATURE_OPTIONS}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DedupInputError(
                f"{folder}: no persisted dedup index ({type(exc).__name__}: {exc})"
            ) from exc
        if have != want:
            raise DedupInputError(f"{folder}: index built with {have}, this run uses {want}: not comparable")
        try:
            parts.append(ShardSignatures.load(index_path))
        except (OSError, ValueError, KeyError) as exc:
            raise DedupInputError(f"{index_path}: unreadable index ({exc})") from exc
    if not parts:
        return None
    return ShardSignatures(
        ids=[i for p in parts for i in p.ids],
        keys=[k for p in parts for k in p.keys],
        sigs=np.concatenate([p.sigs for p in parts]),
    )


def _signatures_stage(
    shards: list[Path], options: DedupOptions, work: Path, workers: int, progress: Progress | None
) -> list[ShardSignatures]:
    work.mkdir(parents=True, exist_ok=True)
    paths = [work / f"sig-{signature_key(s, options)}.npz" for s in shards]
    todo = [(s, p) for s, p in zip(shards, paths, strict=True) if not p.is_file()]
    done = len(shards) - len(todo)

    def finished(sig: ShardSignatures, path: Path) -> None:
        nonlocal done
        sig.save(path)
        done += 1
        if progress:
            progress("signatures", 0.7 * done / len(shards), f"{done}/{len(shards)} shards")

    if workers > 1 and len(todo) > 1:
        # forkserver, not fork: the service calls this from a thread beside the event loop.
        ctx = mp.get_context("forkserver")
        with ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=ctx) as pool:
            futures = [(pool.submit(shard_signatures, s, options), p) for s, p in todo]
            for fut, p in futures:
                finished(fut.result(), p)
    else:
        for s, p in todo:
            finished(shard_signatures(s, options), p)
    return [ShardSignatures.load(p) for p in paths]


def run_dedup(
    inputs: list[Path],
    out_dir: Path,
    dataset_id: str,
    options: DedupOptions | None = None,
    progress: Progress | None = None,
    workers: int = 1,
) -> dict[str, Any]:
    """Deduplicate the documents of ``inputs`` into ``out_dir`` (replacing a previous run); returns the manifest."""
    o = options or DedupOptions()
    sources = [input_shards(Path(p)) for p in inputs]
    shards = [s for _, files, _ in sources for s in files]
    prior = load_prior_index(o.against_indexes, o)
    out_dir.mkdir(parents=True, exist_ok=True)
    parts = _signatures_stage(shards, o, out_dir / ".work", workers, progress)
    n = sum(len(p.ids) for p in parts)
    if n == 0:
        raise DedupInputError(f"no documents in {', '.join(map(str, inputs))}")
    decisions, cstats = cluster(parts, o, prior)
    if progress:
        progress("cluster", 0.8, f"{len(decisions)} of {n} documents are duplicates")
    manifest = _rewrite(sources, shards, parts, decisions, out_dir, dataset_id, inputs, o, cstats)
    shutil.rmtree(out_dir / ".work", ignore_errors=True)  # finished: stage-1 results are in the index
    if progress:
        progress("write", 1.0, f"{manifest['documents']}/{n} documents kept")
    return manifest


def _rewrite(
    sources: list[tuple[str | None, list[Path], int | None]],
    shards: list[Path],
    parts: list[ShardSignatures],
    decisions: dict[int, Any],
    out_dir: Path,
    dataset_id: str,
    inputs: list[Path],
    o: DedupOptions,
    cstats: dict[str, int],
) -> dict[str, Any]:
    for sub in ("data", "removed", "index"):
        shutil.rmtree(out_dir / sub, ignore_errors=True)
    fmt = "jsonl.zst" if shards and all(s.name.endswith(".zst") for s in shards) else "jsonl.gz"
    kept_w = ShardWriter(out_dir / "data", "part", 10_000, out_dir, fmt)
    removed_w = ShardWriter(out_dir / "removed", "removed", 10_000, out_dir, fmt)
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
        for lineno, line in raw_lines(shard):
            d = decisions.get(i)
            if d is None and not spans.active:  # the common case: copy the line, no JSON round trip
                kept_w.write_line(line)
                kept_rows.append(i)
                text_bytes += int(nbytes[i])
                tokens += int(ntoks[i])
                i += 1
                continue
            rec = parse(shard, lineno, line)
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
    ShardSignatures([ids[r] for r in kept_rows], [all_keys[r] for r in kept_rows], sigs[kept_rows]).save(
        _mkparent(out_dir / INDEX)
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
        "inputs": [str(p) for p in inputs],
        "options": o.model_dump(mode="json"),
        "shards": kept_w.close(),
        "removed_shards": removed_w.close(),
        "index": {
            "path": INDEX,
            "documents": len(kept_rows),
            "signature_options": {k: getattr(o, k) for k in _SIGNATURE_OPTIONS},
        },
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


def _mkparent(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path
