"""Dedup pipeline over one or more datasets: exact groups → MinHash-LSH → clusters → shards + manifest.

Two passes over the input (signatures, then rewrite) so memory holds one signature per distinct
text, not the corpus. Output folder layout::

    manifest.json                       dataset id, shards + sha256, stats, retention per stage
    data/part-00000.jsonl.gz            kept documents, records unchanged
    removed/removed-00000.jsonl.gz      removed documents with reason, cluster id and kept doc id
"""

from __future__ import annotations

import gzip
import json
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from contracts.events import DedupOptions
from services.dedup.core.minhash import (
    MinHasher,
    UnionFind,
    estimated_jaccard,
    exact_key,
    lsh_candidates,
)
from services.dedup.core.shards import ShardWriter

Progress = Callable[..., None]  # (stage, fraction, message="", **metrics)
MANIFEST = "manifest.json"
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af]")


class DedupInputError(ValueError):
    """The input can never be deduplicated: missing folder, unreadable manifest or shard, no documents."""


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
        files = sorted(p for p in folder.rglob("*") if p.name.endswith((".jsonl", ".jsonl.gz")))
        return None, files, None
    raise DedupInputError(f"dataset folder not found: {folder}")


def _records(shards: list[Path]) -> Iterator[dict[str, Any]]:
    for shard in shards:
        opener = gzip.open if shard.name.endswith(".gz") else open
        try:
            with opener(shard, "rt", encoding="utf-8") as f:
                for lineno, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    rec = json.loads(line)
                    if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
                        raise DedupInputError(f"{shard}:{lineno}: record without a string 'text'")
                    yield rec
        except (OSError, EOFError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DedupInputError(f"{shard}: unreadable shard ({type(exc).__name__}: {exc})") from exc


def _tokens_estimate(rec: dict[str, Any]) -> int:
    s = rec.get("signals")
    if isinstance(s, dict) and "words" in s:
        cjk = int(s.get("cjk_chars", 0))
        return round((int(s["words"]) - cjk) * 1.3 + cjk)
    cjk = len(_CJK.findall(rec["text"]))
    return round(len(_CJK.sub(" ", rec["text"]).split()) * 1.3 + cjk)


def run_dedup(
    inputs: list[Path],
    out_dir: Path,
    dataset_id: str,
    options: DedupOptions | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Deduplicate the documents of ``inputs`` into ``out_dir`` (replacing a previous run); returns the manifest."""
    o = options or DedupOptions()
    sources = [input_shards(Path(p)) for p in inputs]
    shards = [s for _, files, _ in sources for s in files]
    expected = sum(n or 0 for _, _, n in sources) or None
    hasher = MinHasher(o.bands * o.rows, o.shingle_size, o.seed)

    # Pass 1: ids, exact groups (one signature per distinct normalised text).
    ids: list[str] = []
    group_of: list[int] = []
    group_index: dict[str, int] = {}
    group_sigs: list[np.ndarray] = []
    for i, rec in enumerate(_records(shards)):
        ids.append(str(rec.get("id", i)))
        key = exact_key(rec["text"]) if o.exact else str(i)
        g = group_index.get(key)
        if g is None:
            g = group_index[key] = len(group_sigs)
            group_sigs.append(hasher.signature(rec["text"]) if o.near else np.zeros(0, np.uint32))
        group_of.append(g)
        if progress and expected and i % 500 == 0:
            progress("signatures", 0.8 * i / expected, f"{i}/{expected} documents")
    n, n_groups = len(ids), len(group_sigs)
    if n == 0:
        raise DedupInputError(f"no documents in {', '.join(map(str, inputs))}")

    # Near duplicates: LSH candidates between distinct texts, verified by estimated Jaccard.
    uf = UnionFind(n_groups)
    candidates = verified = 0
    if o.near and n_groups > 1:
        sigs = np.stack(group_sigs)
        pairs = lsh_candidates(sigs, o.bands, o.rows)
        candidates = len(pairs)
        for a, b in sorted(pairs):
            if estimated_jaccard(sigs[a], sigs[b]) >= o.jaccard_threshold:
                uf.union(a, b)
                verified += 1

    # Clusters over documents; the kept one is the lowest (id, position): deterministic.
    members: dict[int, list[int]] = {}
    for i in range(n):
        members.setdefault(uf.find(group_of[i]), []).append(i)
    clusters = sorted((min(m, key=lambda i: (ids[i], i)), m) for m in members.values() if len(m) > 1)
    removed: dict[int, dict[str, Any]] = {}
    exact_dups = near_dups = near_clusters = 0
    for cid, (keep, docs) in enumerate(clusters):
        if len({group_of[i] for i in docs}) > 1:
            near_clusters += 1
        seen_groups = {group_of[keep]}
        for i in sorted(docs, key=lambda i: (ids[i], i)):
            if i == keep:
                continue
            g = group_of[i]
            # The first document of each distinct text in the cluster is a near duplicate of the
            # kept one; further copies of that text are exact duplicates.
            reason = "exact" if g in seen_groups else "near"
            seen_groups.add(g)
            if reason == "exact":
                exact_dups += 1
            else:
                near_dups += 1
            jac = (
                1.0
                if reason == "exact" or not o.near
                else estimated_jaccard(group_sigs[g], group_sigs[group_of[keep]])
            )
            removed[i] = {
                "reason": reason,
                "cluster_id": f"c{cid:06d}",
                "kept_id": ids[keep],
                "jaccard": round(jac, 4),
            }

    # Pass 2: rewrite.
    out_dir.mkdir(parents=True, exist_ok=True)
    for sub in ("data", "removed"):
        shutil.rmtree(out_dir / sub, ignore_errors=True)
    shard_docs = 10_000
    kept_w = ShardWriter(out_dir / "data", "part", shard_docs, out_dir)
    removed_w = ShardWriter(out_dir / "removed", "removed", shard_docs, out_dir)
    text_bytes = tokens = 0
    for i, rec in enumerate(_records(shards)):
        info = removed.get(i)
        if info is None:
            kept_w.write(rec)
            text_bytes += len(rec["text"].encode())
            tokens += _tokens_estimate(rec)
        else:
            removed_w.write({"id": ids[i], **info, "source": rec.get("source"), "text": rec["text"]})
    if progress:
        progress("write", 1.0, f"{kept_w.documents}/{n} documents kept")
    after_exact = n - exact_dups
    manifest = {
        "dataset_id": dataset_id,
        "kind": "corpus",
        "produced_by": "dedup",
        "format": "jsonl.gz",
        "source_datasets": [sid for sid, _, _ in sources if sid],
        "inputs": [str(p) for p in inputs],
        "options": o.model_dump(mode="json"),
        "shards": kept_w.close(),
        "removed_shards": removed_w.close(),
        "documents": kept_w.documents,
        "bytes": text_bytes,
        "token_estimate": tokens,
        "stats": {
            "documents_in": n,
            "documents_out": kept_w.documents,
            "exact_duplicates": exact_dups,
            "near_duplicates": near_dups,
            "clusters": len(clusters),
            "near_clusters": near_clusters,
            "distinct_texts": n_groups,
            "candidate_pairs": candidates,
            "verified_pairs": verified,
        },
        "stages": [
            {"stage": "exact_dedup", "docs_in": n, "docs_out": after_exact},
            {"stage": "near_dedup", "docs_in": after_exact, "docs_out": after_exact - near_dups},
        ],
    }
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False))
    return manifest
