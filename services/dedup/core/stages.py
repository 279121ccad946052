"""The dedup stages as separate, restartable units of work.

1. ``shard_signatures``: one input shard → ids, exact keys and MinHash signatures (``.npz``).
   Independent per shard: the unit a process pool or a bus worker takes.
2. ``band_pairs``: every shard's signatures (+ the persisted indexes of earlier datasets) and a
   range of bands → verified candidate pairs. Independent per band range.
3. ``cluster``: the band ranges' pairs → connected components → which document is removed,
   why, its cluster and the kept document; then ``rewrite`` (in pipeline.py): input shards →
   kept shards (with line/paragraph dedup) and removed shards.

Each stage writes its result atomically (temporary name, then rename), so a killed worker's
shard is simply redone and a finished one is skipped.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from contracts.events import DedupOptions
from services.dedup.core.inputs import records
from services.dedup.core.lsh import BandPairs, components
from services.dedup.core.minhash import hasher

_SIG_BATCH = 2048  # documents per signature batch: bounds the token lists held in memory
_SIG_CHARS = 1 << 22  # characters per batch: bounds the code-point arrays (and the cached powers)


def tokens_estimate(rec: dict[str, Any]) -> int:
    s = rec.get("signals")
    if isinstance(s, dict) and isinstance(s.get("words"), int):
        cjk = int(s.get("cjk_chars", 0))
        return round((s["words"] - cjk) * 1.3 + cjk)
    return len(rec["text"].encode()) // 4  # the usual ~4 bytes per BPE token when no signals exist


@dataclass
class ShardSignatures:
    ids: list[str]
    keys: list[str]  # exact-dedup keys (hex), or "" when exact dedup is off
    sigs: npt.NDArray[np.uint32]  # (documents, bands * rows); (documents, 0) when near dedup is off
    nbytes: npt.NDArray[np.int64] | None = None  # text bytes per document (not kept in the index)
    tokens: npt.NDArray[np.int64] | None = None  # token estimate per document

    def save(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            extra: dict[str, Any] = {}
            if self.nbytes is not None and self.tokens is not None:
                extra = {"nbytes": self.nbytes, "tokens": self.tokens}
            np.savez(
                f,
                ids=np.array(self.ids, dtype=str),
                keys=np.array(self.keys, dtype=str),
                sigs=self.sigs,
                **extra,
            )
        os.replace(tmp, path)  # atomic: a reader sees the whole file or none

    @classmethod
    def load(cls, path: Path) -> ShardSignatures:
        with np.load(path) as z:
            extra = {"nbytes": z["nbytes"], "tokens": z["tokens"]} if "nbytes" in z else {}
            return cls(ids=z["ids"].tolist(), keys=z["keys"].tolist(), sigs=z["sigs"], **extra)


def shard_signatures(shard: Path, options: DedupOptions) -> ShardSignatures:
    """Stage 1 for one shard; a record without an id is named ``<shard file>:<position>``."""
    o = options
    h = hasher(o.bands * o.rows, o.shingle_size, o.seed)
    ids: list[str] = []
    keys: list[str] = []
    sig_parts: list[npt.NDArray[np.uint32]] = []
    batch: list[str] = []
    chars = 0
    nbytes: list[int] = []
    toks: list[int] = []

    def flush() -> None:
        nonlocal chars
        sigs, batch_keys = h.signatures_and_keys(batch, near=o.near)
        sig_parts.append(sigs)
        keys.extend(batch_keys if o.exact else [""] * len(batch))
        batch.clear()
        chars = 0

    for i, rec in enumerate(records(shard)):
        ids.append(str(rec["id"]) if rec.get("id") is not None else f"{shard.name}:{i}")
        text = rec["text"]
        batch.append(text)
        chars += len(text)
        nbytes.append(len(text) if text.isascii() else len(text.encode()))
        toks.append(tokens_estimate(rec))
        if len(batch) >= _SIG_BATCH or chars >= _SIG_CHARS:
            flush()
    if batch:
        flush()
    width = o.bands * o.rows if o.near else 0
    sigs = np.concatenate(sig_parts) if sig_parts else np.zeros((0, width), np.uint32)
    return ShardSignatures(ids, keys, sigs, np.array(nbytes, np.int64), np.array(toks, np.int64))


@dataclass
class Decision:
    reason: str  # exact | near | exact_prior | near_prior
    cluster_id: str
    kept_id: str
    jaccard: float


def combined(parts: list[ShardSignatures], prior: ShardSignatures | None) -> ShardSignatures:
    """The prior index (when given) then every shard, as one table: the global document order."""
    all_parts = ([prior] if prior else []) + parts
    width = max((p.sigs.shape[1] for p in all_parts), default=0)
    sigs = np.concatenate([p.sigs for p in all_parts]) if all_parts else np.zeros((0, width), np.uint32)
    return ShardSignatures(
        [i for p in all_parts for i in p.ids], [k for p in all_parts for k in p.keys], sigs
    )


def exact_groups(keys: list[str], exact: bool) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """(group of every document, first document of every group): one group per distinct exact key."""
    n = len(keys)
    if not exact:
        return np.arange(n, dtype=np.int64), np.arange(n, dtype=np.int64)
    first: dict[str, int] = {}
    group_of = np.fromiter((first.setdefault(k, len(first)) for k in keys), dtype=np.int64, count=n)
    _, reps = np.unique(group_of, return_index=True)  # groups are numbered in order of appearance
    return group_of, reps.astype(np.int64)


def band_pairs(
    table: ShardSignatures,
    options: DedupOptions,
    band_range: Iterable[int] | None = None,
    reps: npt.NDArray[np.int64] | None = None,
) -> BandPairs:
    """Stage 2 for a band range: verified candidate pairs between exact groups' representatives
    (pair indices are positions in ``reps``)."""
    o = options
    if reps is None:
        _, reps = exact_groups(table.keys, o.exact)
    if not o.near or len(reps) < 2:
        return BandPairs.merge([])
    return BandPairs.compute(table.sigs[reps], o.bands, o.rows, o.jaccard_threshold, band_range)


def cluster(
    parts: list[ShardSignatures],
    options: DedupOptions,
    prior: ShardSignatures | None = None,
    pairs: BandPairs | None = None,
) -> tuple[dict[int, Decision], dict[str, int]]:
    """Stage 3: {global document index → decision} and cluster statistics.

    ``pairs`` are the band ranges' merged results (computed here for all bands when None).
    Documents of ``prior`` (earlier datasets' persisted index) always win a cluster: a new
    document that matches one is removed with an ``_prior`` reason. Otherwise the kept document
    is the lowest (id, position): the same input always keeps the same documents.
    """
    o = options
    n_prior = len(prior.ids) if prior else 0
    table = combined(parts, prior)
    ids, n = table.ids, len(table.ids)
    group_of, reps = exact_groups(table.keys, o.exact)
    if pairs is None:
        pairs = band_pairs(table, o, reps=reps)
    edges = pairs.pairs[pairs.verified]
    root = components(len(reps), edges)[group_of]  # the cluster of every document
    in_cluster = np.flatnonzero(np.bincount(root, minlength=len(reps))[root] > 1)
    members_of: dict[int, list[int]] = {}
    for i, r in zip(in_cluster.tolist(), root[in_cluster].tolist(), strict=True):
        members_of.setdefault(r, []).append(i)

    def rank(i: int) -> tuple[int, str, int]:
        return (0 if i < n_prior else 1, ids[i], i)

    clusters = sorted((min(m, key=rank), m) for m in members_of.values())
    sigs = table.sigs if o.near and n else None
    removed: list[tuple[int, int, bool, int]] = []  # (document, kept document, exact, cluster)
    near_clusters = 0
    for cid, (keep, docs) in enumerate(clusters):
        if len({int(group_of[i]) for i in docs}) > 1:
            near_clusters += 1
        seen_groups = {int(group_of[keep])}
        for i in sorted(docs, key=rank):
            g = int(group_of[i])
            exact = g in seen_groups
            seen_groups.add(g)
            if i == keep or i < n_prior:  # earlier datasets are never rewritten
                continue
            # The first document of each distinct text in a cluster is a near duplicate of the
            # kept one; further copies of that text are exact duplicates.
            removed.append((i, keep, exact, cid))
    jaccard = np.ones(len(removed))
    if sigs is not None and sigs.shape[1] and removed:  # estimated Jaccard with the kept one, at once
        docs_, kept_ = np.array([r[0] for r in removed]), np.array([r[1] for r in removed])
        jaccard = np.count_nonzero(sigs[docs_] == sigs[kept_], axis=1) / sigs.shape[1]
    decisions: dict[int, Decision] = {}
    for (i, keep, exact, cid), jac in zip(removed, jaccard.tolist(), strict=True):
        reason = ("exact" if exact else "near") + ("_prior" if keep < n_prior else "")
        decisions[i - n_prior] = Decision(reason, f"c{cid:06d}", ids[keep], 1.0 if exact else round(jac, 4))
    stats = {
        "clusters": len(clusters),
        "near_clusters": near_clusters,
        "distinct_texts": len(reps),
        "candidate_pairs": len(pairs.pairs),
        "verified_pairs": len(edges),
        "prior_documents": n_prior,
    }
    return decisions, stats
