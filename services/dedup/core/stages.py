"""The dedup stages as separate, restartable units of work.

1. ``shard_signatures``: one input shard → ids, exact keys and MinHash signatures (``.npz``).
   Independent per shard: the unit a process pool or a bus worker takes.
2. ``cluster``: every shard's signatures (+ the persisted indexes of earlier datasets) →
   which document is removed, why, its cluster and the kept document.
3. ``rewrite`` (in pipeline.py): input shards → kept shards (with line/paragraph dedup) and
   removed shards.

Each stage writes its result atomically (temporary name, then rename), so a killed worker's
shard is simply redone and a finished one is skipped.
"""

from __future__ import annotations

import gzip
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt

from contracts.events import DedupOptions
from services.dedup.core.minhash import MinHasher, UnionFind, bucket_groups

_SIG_BATCH = 2048  # documents per signature batch: bounds the token lists held in memory


class DedupInputError(ValueError):
    """The input can never be deduplicated: missing folder, unreadable manifest or shard, no documents."""


def open_binary(path: Path) -> IO[bytes]:
    name = path.name.lower()
    if name.endswith(".gz"):
        return gzip.open(path, "rb")  # type: ignore[return-value]
    if name.endswith(".zst"):
        import zstandard

        raw = zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True)
        return io.BufferedReader(raw)  # type: ignore[arg-type]
    return open(path, "rb")


def raw_lines(shard: Path) -> Iterator[tuple[int, bytes]]:
    """(line number, line) of every non-blank line: the rewrite copies kept lines as they are."""
    try:
        with open_binary(shard) as f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    yield lineno, line if line.endswith(b"\n") else line + b"\n"
    except Exception as exc:  # gzip/zstd errors all mean the same: a damaged shard
        raise DedupInputError(f"{shard}: unreadable shard ({type(exc).__name__}: {exc})") from exc


try:  # orjson parses records ~3x faster; the standard library is the fallback
    from orjson import loads as _loads
except ImportError:  # pragma: no cover - orjson is optional
    _loads = json.loads  # type: ignore[assignment]


def parse(shard: Path, lineno: int, line: bytes) -> dict[str, Any]:
    try:
        rec = _loads(line)
    except ValueError as exc:  # JSONDecodeError (both libraries) and UnicodeDecodeError
        raise DedupInputError(f"{shard}:{lineno}: not a JSON record ({exc})") from exc
    if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
        raise DedupInputError(f"{shard}:{lineno}: record without a string 'text'")
    return rec


def records(shard: Path) -> Iterator[dict[str, Any]]:
    for lineno, line in raw_lines(shard):
        yield parse(shard, lineno, line)


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
    hasher = MinHasher(o.bands * o.rows, o.shingle_size, o.seed)
    ids: list[str] = []
    keys: list[str] = []
    sig_parts: list[npt.NDArray[np.uint32]] = []
    batch: list[str] = []
    nbytes: list[int] = []
    toks: list[int] = []

    def flush() -> None:
        sigs, batch_keys = hasher.signatures_and_keys(batch, near=o.near)
        sig_parts.append(sigs)
        keys.extend(batch_keys if o.exact else [""] * len(batch))
        batch.clear()

    for i, rec in enumerate(records(shard)):
        ids.append(str(rec["id"]) if rec.get("id") is not None else f"{shard.name}:{i}")
        batch.append(rec["text"])
        nbytes.append(len(rec["text"].encode()))
        toks.append(tokens_estimate(rec))
        if len(batch) >= _SIG_BATCH:
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


def cluster(
    parts: list[ShardSignatures], options: DedupOptions, prior: ShardSignatures | None = None
) -> tuple[dict[int, Decision], dict[str, int]]:
    """Stage 2: {global document index → decision} and cluster statistics.

    Documents of ``prior`` (earlier datasets' persisted index) always win a cluster: a new
    document that matches one is removed with an ``_prior`` reason. Otherwise the kept document
    is the lowest (id, position): the same input always keeps the same documents.
    """
    o = options
    n_prior = len(prior.ids) if prior else 0
    all_parts = ([prior] if prior else []) + parts
    ids = [i for p in all_parts for i in p.ids]
    keys = [k for p in all_parts for k in p.keys]
    n = len(ids)
    # Exact groups: one representative (and one signature) per distinct key.
    group_of = np.empty(n, dtype=np.int64)
    first: dict[str, int] = {}
    reps: list[int] = []
    for i, key in enumerate(keys):
        g = first.get(key) if o.exact else None
        if g is None:
            g = len(reps)
            reps.append(i)
            if o.exact:
                first[key] = g
        group_of[i] = g
    uf = UnionFind(len(reps))
    candidates = verified = 0
    sigs = np.concatenate([p.sigs for p in all_parts]) if o.near and n else None
    if sigs is not None and len(reps) > 1:
        rep_sigs = sigs[reps]
        seen: set[tuple[int, int]] = set()
        for members in bucket_groups(rep_sigs, o.bands, o.rows):
            m = members.tolist()
            anchors = m if len(m) <= 64 else m[:2]  # huge buckets: star, the union-find does the rest
            for ai, a in enumerate(anchors):
                for b in m[ai + 1 :]:
                    pair = (a, b) if a < b else (b, a)
                    if pair in seen:
                        continue
                    seen.add(pair)
                    candidates += 1
                    if (
                        np.count_nonzero(rep_sigs[a] == rep_sigs[b])
                        >= o.jaccard_threshold * rep_sigs.shape[1]
                    ):
                        uf.union(a, b)
                        verified += 1
    members_of: dict[int, list[int]] = {}
    for i in range(n):
        members_of.setdefault(uf.find(int(group_of[i])), []).append(i)

    def rank(i: int) -> tuple[int, str, int]:
        return (0 if i < n_prior else 1, ids[i], i)

    clusters = sorted((min(m, key=rank), m) for m in members_of.values() if len(m) > 1)
    decisions: dict[int, Decision] = {}
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
            jac = 1.0 if exact or sigs is None else float(np.mean(sigs[i] == sigs[keep]))
            reason = ("exact" if exact else "near") + ("_prior" if keep < n_prior else "")
            decisions[i - n_prior] = Decision(reason, f"c{cid:06d}", ids[keep], round(jac, 4))
    stats = {
        "clusters": len(clusters),
        "near_clusters": near_clusters,
        "distinct_texts": len(reps),
        "candidate_pairs": candidates,
        "verified_pairs": verified,
        "prior_documents": n_prior,
    }
    return decisions, stats
