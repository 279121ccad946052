"""A dedup job as work items that any number of workers share (the path of many replicas).

A job is planned once (``make_plan``) into three stages of independent items:

    signatures  one item per input shard    → signatures/00000.npz  (ids, exact keys, MinHash)
    pairs       one item per range of bands → pairs/00000.npz       (verified candidate pairs)
    cluster     one item                    → the output dataset     (clusters, rewrite, index)

An item reads the plan and the results of earlier stages only, and writes its own result under
a name the plan fixes, atomically: an item whose result exists is finished (a second delivery
skips it) and an item whose worker died has no result and is done again. The items use the same
functions as ``run_dedup`` in the same order, so the output is the single-process output. This
module works on local paths; ``Deduplicator`` moves files to and from the artifact store.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contracts.events import DedupOptions
from services.dedup.core.inputs import DedupInputError
from services.dedup.core.lsh import BandPairs
from services.dedup.core.pipeline import input_shards, signature_options
from services.dedup.core.rewrite import Source, rewrite
from services.dedup.core.stages import ShardSignatures, band_pairs, cluster, combined, shard_signatures

STAGES = ("signatures", "pairs", "cluster")
PLAN = "plan.json"
FINISHED = "cluster.json"  # the cluster item's result: the job's stats, written after the dataset


@dataclass
class Plan:
    job_id: str
    dataset_id: str
    inputs: list[str]  # the input folders as the manifest names them
    sources: list[dict[str, Any]]  # per input: dataset_id, shard URIs, documents (when known)
    options: DedupOptions
    band_ranges: list[tuple[int, int]]
    extra: dict[str, Any] = field(default_factory=dict)  # the adapter's own (events to publish...)

    @property
    def shards(self) -> list[str]:
        return [s for src in self.sources for s in src["shards"]]

    def count(self, stage: str) -> int:
        return {"signatures": len(self.shards), "pairs": len(self.band_ranges), "cluster": 1}[stage]

    def next_stage(self, stage: str | None) -> str | None:
        """The stage after ``stage`` (the first when None) that has items."""
        later = STAGES if stage is None else STAGES[STAGES.index(stage) + 1 :]
        return next((s for s in later if self.count(s)), None)

    def to_json(self) -> str:
        raw = {**self.__dict__, "options": self.options.model_dump(mode="json")}
        return json.dumps(raw, indent=1, sort_keys=True, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> Plan:
        raw = json.loads(text)
        raw["options"] = DedupOptions.model_validate(raw["options"])
        raw["band_ranges"] = [tuple(r) for r in raw["band_ranges"]]
        return cls(**raw)


def result_name(stage: str, index: int) -> str:
    """Where an item's result lives in the work folder."""
    if stage == "cluster":
        return FINISHED
    return f"{stage}/{index:05d}.npz"


def band_ranges(options: DedupOptions, bands_per_item: int) -> list[tuple[int, int]]:
    if not options.near:
        return []
    step = max(1, bands_per_item)
    return [(b, min(b + step, options.bands)) for b in range(0, options.bands, step)]


def make_plan(
    job_id: str,
    dataset_id: str,
    folders: list[Path],
    options: DedupOptions,
    shard_uri: Callable[[Path], str],
    bands_per_item: int = 4,
    extra: dict[str, Any] | None = None,
) -> Plan:
    """The plan of a job over dataset folders (local); ``shard_uri`` names a shard for the workers."""
    sources = [input_shards(f) for f in folders]
    if not any(files for _, files, _ in sources):
        raise DedupInputError(f"no documents in {', '.join(map(str, folders))}")
    return Plan(
        job_id=job_id,
        dataset_id=dataset_id,
        inputs=[str(f) for f in folders],
        sources=[
            {"dataset_id": sid, "shards": [shard_uri(s) for s in files], "documents": docs}
            for sid, files, docs in sources
        ],
        options=options,
        band_ranges=band_ranges(options, bands_per_item),
        extra=extra or {},
    )


def compute_signatures(shard: Path, options: DedupOptions, out: Path) -> int:
    """Item ``signatures``: one shard's signatures to ``out``; returns its number of documents."""
    sig = shard_signatures(shard, options)
    out.parent.mkdir(parents=True, exist_ok=True)
    sig.save(out)
    return len(sig.ids)


def compute_pairs(
    plan: Plan, index: int, signatures: list[Path], prior: ShardSignatures | None, out: Path
) -> int:
    """Item ``pairs``: the verified candidate pairs of one band range to ``out``; returns their count."""
    table = combined([ShardSignatures.load(p) for p in signatures], prior)
    lo, hi = plan.band_ranges[index]
    result = band_pairs(table, plan.options, range(lo, hi))
    out.parent.mkdir(parents=True, exist_ok=True)
    result.save(out)
    return len(result.pairs)


def compute_cluster(
    plan: Plan,
    signatures: list[Path],
    pairs: list[Path],
    prior: ShardSignatures | None,
    shards: list[Path],
    out_dir: Path,
) -> dict[str, Any]:
    """Item ``cluster``: clusters from every band range's pairs, then the rewrite into ``out_dir``
    (``shards``: the local input shards in plan order). Returns the manifest."""
    o = plan.options
    parts = [ShardSignatures.load(p) for p in signatures]
    if sum(len(p.ids) for p in parts) == 0:
        raise DedupInputError(f"no documents in {', '.join(plan.inputs)}")
    decisions, cstats = cluster(parts, o, prior, BandPairs.merge([BandPairs.load(p) for p in pairs]))
    local = iter(shards)
    sources: list[Source] = [
        (src["dataset_id"], [next(local) for _ in src["shards"]], src["documents"]) for src in plan.sources
    ]
    out_dir.mkdir(parents=True, exist_ok=True)
    return rewrite(
        sources,
        shards,
        parts,
        decisions,
        out_dir,
        plan.dataset_id,
        plan.inputs,
        o,
        cstats,
        signature_options(o),
    )
