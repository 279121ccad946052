"""Dedup pipeline over one or more datasets: signatures per shard → clusters → rewrite + index.

Output folder layout::

    manifest.json                      dataset id, shards + sha256, stats, retention per stage
    data/part-00000.jsonl.gz           kept documents (records unchanged but for removed spans);
                                       .jsonl.zst or .parquet by ``DedupOptions.output_format``
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
from services.dedup.core.inputs import SHARD_SUFFIXES, DedupInputError
from services.dedup.core.minhash import MINHASH_VERSION
from services.dedup.core.rewrite import MANIFEST, Source, rewrite
from services.dedup.core.stages import ShardSignatures, cluster, shard_signatures

Progress = Callable[..., None]  # (stage, fraction, message="", **metrics)
# Options that change signatures: an index built with others cannot be compared against.
_SIGNATURE_OPTIONS = ("exact", "near", "shingle_size", "bands", "rows", "seed")


def signature_options(options: DedupOptions) -> dict[str, Any]:
    """What an index's signatures depend on: the options above and the hashing scheme's version."""
    return {**{k: getattr(options, k) for k in _SIGNATURE_OPTIONS}, "minhash_version": MINHASH_VERSION}


__all__ = [
    "DedupInputError",
    "input_shards",
    "load_prior_index",
    "run_dedup",
    "signature_key",
    "signature_options",
]


def input_shards(folder: Path) -> Source:
    """(dataset id, shard files, documents when known) of a dataset folder (manifest) or a folder of
    shards (``.jsonl``, ``.jsonl.gz``, ``.jsonl.zst``, ``.parquet``)."""
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
            p for p in folder.rglob("*") if p.name.endswith(SHARD_SUFFIXES) and ".work" not in p.parts
        )
        return None, files, None
    raise DedupInputError(f"dataset folder not found: {folder}")


def signature_key(shard: Path, options: DedupOptions) -> str:
    """Names a shard's stage-1 result: changes when the shard or the signature options change."""
    st = shard.stat()
    raw = json.dumps(
        [str(shard.resolve()), st.st_size, st.st_mtime_ns, signature_options(options)], sort_keys=True
    )
    return hashlib.sha256(raw.encode()).hexdigest()[:24]


def load_prior_index(folders: list[str], options: DedupOptions) -> ShardSignatures | None:
    """The persisted indexes of earlier dedup outputs, concatenated; None when there are none."""
    parts: list[ShardSignatures] = []
    want = signature_options(options)
    for f in folders:
        folder = Path(f.removeprefix("file://"))
        manifest_path = folder / MANIFEST
        try:
            m = json.loads(manifest_path.read_text())
            index_path = folder / m["index"]["path"]
            built = m["index"]["signature_options"]
            # an index from before versioning was hashed with version 1 (float-rounded powers)
            have = {k: built[k] for k in _SIGNATURE_OPTIONS} | {
                "minhash_version": built.get("minhash_version", 1)
            }
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
        # Forked from a server that has the core (numpy, the hashing tables) imported already: a
        # worker then starts in milliseconds, not the ~0.5 s of importing it each time.
        ctx.set_forkserver_preload(["services.dedup.core.stages"])
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
    manifest = rewrite(
        sources,
        shards,
        parts,
        decisions,
        out_dir,
        dataset_id,
        [str(p) for p in inputs],
        o,
        cstats,
        signature_options(o),
    )
    shutil.rmtree(out_dir / ".work", ignore_errors=True)  # finished: stage-1 results are in the index
    if progress:
        progress("write", 1.0, f"{manifest['documents']}/{n} documents kept")
    return manifest
