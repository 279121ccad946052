"""The service's core: a dedup job over a dataset of the artifact store, in one call or as work items.

One call (``deduplicate``): the replica that takes the job runs all of it (``run_dedup``).

Work items (``start``, ``open_item``, ``run_item``, ``end_job``): the job is planned once into the
work folder, then its items (signatures per shard, pairs per band range, the cluster) are done by
whichever replica takes them. An item whose result is stored is skipped; the cluster item writes
the dataset and the end marker (``FINISHED``), which holds the job's result and its
``corpus.deduplicated``: whoever finds the job over (a late copy of an item, the job asked again)
ends it the same way. Everything here is blocking: the adapter runs it in a thread.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contracts.events import CorpusDeduplicated, DatasetRef, DedupOptions, PipelineSpec
from services.dedup.core.distributed import (
    FINISHED,
    PLAN,
    Plan,
    compute_cluster,
    compute_pairs,
    compute_signatures,
    make_plan,
    result_name,
)
from services.dedup.core.inputs import DedupInputError
from services.dedup.core.pipeline import Progress, load_prior_index, run_dedup
from services.dedup.core.rewrite import MANIFEST
from services.dedup.core.stages import ShardSignatures
from services.dedup.core.work import WorkFolder, summarize
from shared.artifacts import ArtifactStore

# Share of the job's progress at the start of each stage, and what the stage's items add to it.
_STAGE_START = {"signatures": 0.0, "pairs": 0.6, "cluster": 0.8}
_STAGE_SPAN = {"signatures": 0.6, "pairs": 0.2}


def _folder_name(job_id: str) -> str:
    """``job_id`` as a folder name: the characters a job board key allows, anything else as '_'."""
    return "".join(c if c.isalnum() or c in "-_=." else "_" for c in job_id)


def output_id(source_id: str) -> str:
    return f"{source_id}-dedup"


@dataclass(frozen=True)
class FinishedJob:
    """A finished job: its result (for the job board) and the ``corpus.deduplicated`` to announce."""

    event: CorpusDeduplicated
    result: dict[str, Any]

    @property
    def message(self) -> str:
        return f"{self.result['documents_out']}/{self.result['documents_in']} documents kept"


@dataclass(frozen=True)
class StageItems:
    """The ``count`` items of ``stage`` to hand out for the job planned in ``work_uri``."""

    job_id: str
    work_uri: str
    stage: str
    count: int


@dataclass(frozen=True)
class WorkItem:
    work: WorkFolder
    plan: Plan
    stage: str
    index: int

    @property
    def job_id(self) -> str:
        return self.plan.job_id


@dataclass(frozen=True)
class ItemDone:
    """How far an item's stage is after it; ``next``: the next stage's items once all are done."""

    job_id: str
    stage: str
    finished: int
    total: int
    next: StageItems | None

    @property
    def fraction(self) -> float:
        return _STAGE_START[self.stage] + _STAGE_SPAN[self.stage] * self.finished / self.total

    @property
    def message(self) -> str:
        return f"{self.finished}/{self.total} {self.stage}"


def deduplicated_event(
    job_id: str,
    source: DatasetRef,
    dataset: DatasetRef,
    manifest: dict[str, Any],
    pipeline: PipelineSpec | None,
) -> CorpusDeduplicated:
    stats = manifest["stats"]
    return CorpusDeduplicated(
        job_id=job_id,
        source=source,
        dataset=dataset,
        documents_in=stats["documents_in"],
        documents_out=stats["documents_out"],
        exact_duplicates=stats["exact_duplicates"],
        near_duplicates=stats["near_duplicates"],
        pipeline=pipeline,
    )


class Deduplicator:
    def __init__(self, store: ArtifactStore, workers: int = 1, bands_per_item: int = 4) -> None:
        self.store = store
        self.workers = workers  # processes computing signatures in a one-call job
        self.bands_per_item = bands_per_item  # LSH bands per pairs item

    # ------------------------------------------------------------------------------ inputs
    def source_folder(self, source: DatasetRef) -> Path:
        """The source dataset's folder, local, after checking its manifest against the digest."""
        folder_uri = source.manifest_uri.rsplit("/", 1)[0]
        try:
            folder = self.store.fetch(folder_uri)
        except FileNotFoundError as exc:
            raise DedupInputError(f"dataset {source.dataset_id}: {exc}") from exc
        manifest_path = folder / MANIFEST
        if not manifest_path.is_file():
            raise DedupInputError(f"dataset {source.dataset_id}: no manifest at {source.manifest_uri}")
        digest = hashlib.sha256(manifest_path.read_bytes()).hexdigest()
        if digest != source.digest:
            raise DedupInputError(
                f"dataset {source.dataset_id}: manifest digest {digest} != expected {source.digest}"
            )
        return folder

    def _local_indexes(self, options: DedupOptions) -> list[str]:
        """``options.against_indexes`` (earlier dedup outputs, by URI) fetched to local folders."""
        try:
            return [str(self.store.fetch(u)) for u in options.against_indexes]
        except FileNotFoundError as exc:
            raise DedupInputError(f"dedup index: {exc}") from exc

    def _prior(self, options: DedupOptions) -> ShardSignatures | None:
        return load_prior_index(self._local_indexes(options), options)

    def _fetch_shard(self, uri: str) -> Path:
        try:
            return self.store.fetch(uri)
        except FileNotFoundError as exc:
            raise DedupInputError(f"input shard {uri}: {exc}") from exc

    def _output(self, dataset_id: str, key: str, staging: Path) -> DatasetRef:
        """The dataset staged in ``staging``, put in the store under ``key``."""
        self.store.put_dir(staging, key)
        return DatasetRef(
            dataset_id=dataset_id,
            manifest_uri=self.store.uri(f"{key}/{MANIFEST}"),
            digest=hashlib.sha256((staging / MANIFEST).read_bytes()).hexdigest(),
        )

    # ------------------------------------------------------------------------------ one call
    def deduplicate(
        self,
        job_id: str,
        source: DatasetRef,
        options: DedupOptions,
        pipeline: PipelineSpec | None,
        progress: Progress | None = None,
    ) -> FinishedJob:
        """The whole job in this process: ``<source>-dedup`` in the store."""
        folder = self.source_folder(source)
        if options.against_indexes:
            options = options.model_copy(update={"against_indexes": self._local_indexes(options)})
        dataset_id = output_id(source.dataset_id)
        key = f"datasets/{dataset_id}"
        staging = self.store.local_staging(key)
        manifest = run_dedup([folder], staging, dataset_id, options, progress, self.workers)
        out = self._output(dataset_id, key, staging)
        event = deduplicated_event(job_id, source, out, manifest, pipeline)
        return FinishedJob(event, {"dataset": out.model_dump(), **manifest["stats"]})

    # ------------------------------------------------------------------------------ work items
    def _work_folder(self, job_id: str, source: DatasetRef, options: DedupOptions) -> WorkFolder:
        """The job's work folder: a new one when the input or the options change."""
        raw = json.dumps([source.digest, options.model_dump(mode="json")], sort_keys=True)
        digest = hashlib.sha256(raw.encode()).hexdigest()[:12]
        return WorkFolder(self.store, self.store.uri(f"dedup-work/{_folder_name(job_id)}-{digest}"))

    def start(
        self,
        job_id: str,
        source: DatasetRef,
        options: DedupOptions,
        pipeline: PipelineSpec | None,
        correlation_id: str | None,
    ) -> StageItems | FinishedJob:
        """Plan the job and return its first items; a job asked again after it finished is over."""
        folder = self.source_folder(source)
        work = self._work_folder(job_id, source, options)
        if work.exists(FINISHED):
            return self._finished(work)
        self._prior(options)  # refuse an incomparable index now, not in the pairs items
        dataset_id = output_id(source.dataset_id)
        extra = {
            "source": source.model_dump(mode="json"),
            "pipeline": pipeline.model_dump(mode="json") if pipeline else None,
            "output_key": f"datasets/{dataset_id}",
            "correlation_id": correlation_id,
        }
        folder_uri = source.manifest_uri.rsplit("/", 1)[0]

        def shard_uri(shard: Path) -> str:
            try:
                return f"{folder_uri}/{shard.relative_to(folder).as_posix()}"
            except ValueError:  # a shard outside the dataset folder (an absolute path in the manifest)
                return shard.resolve().as_uri()

        plan = make_plan(job_id, dataset_id, [folder], options, shard_uri, self.bands_per_item, extra)
        work.write_plan(plan)
        first = plan.next_stage(None)
        assert first is not None  # signatures: make_plan refuses a plan without shards
        return StageItems(job_id, work.uri, first, plan.count(first))

    def open_item(self, work_uri: str, stage: str, index: int) -> WorkItem:
        work = WorkFolder(self.store, work_uri)
        if not work.exists(PLAN):
            raise DedupInputError(f"dedup item {stage}/{index}: no plan in {work_uri}")
        plan = work.read_plan()
        if index >= plan.count(stage):
            raise DedupInputError(f"dedup item {stage}/{index}: the plan has {plan.count(stage)} such items")
        return WorkItem(work, plan, stage, index)

    def ends_job(self, item: WorkItem) -> bool:
        """The cluster item ends its job; so does any item of a job already over (a late copy)."""
        return item.stage == "cluster" or item.work.exists(FINISHED)

    def run_item(self, item: WorkItem, attempt: int) -> ItemDone:
        """A signatures or pairs item, unless its result is stored already (another delivery did it)."""
        work, plan, stage, index = item.work, item.plan, item.stage, item.index
        if not work.exists(result_name(stage, index)):
            work.record(stage, index, "started", attempt)
            info = self._compute(item)
            work.record(stage, index, "done", attempt, **info)
        done = work.names(stage)
        total = plan.count(stage)
        finished = sum(result_name(stage, i) in done for i in range(total))
        following = plan.next_stage(stage)
        items = None
        if finished == total and following is not None:
            items = StageItems(plan.job_id, work.uri, following, plan.count(following))
        return ItemDone(plan.job_id, stage, finished, total, items)

    def _compute(self, item: WorkItem) -> dict[str, Any]:
        """One signatures or pairs item, its result stored atomically."""
        work, plan = item.work, item.plan
        name = result_name(item.stage, item.index)
        out = work.staging(name)
        if item.stage == "signatures":
            shard = self._fetch_shard(plan.shards[item.index])
            info = {"documents": compute_signatures(shard, plan.options, out)}
        else:
            sigs = [work.fetch(result_name("signatures", i)) for i in range(plan.count("signatures"))]
            info = {"pairs": compute_pairs(plan, item.index, sigs, self._prior(plan.options), out)}
        work.store_result(out, name)
        return info

    def end_job(self, item: WorkItem, attempt: int) -> FinishedJob:
        """The job's end: the cluster item's work (unless the job is over already), then its result."""
        if not item.work.exists(FINISHED):
            self._cluster(item, attempt)
        return self._finished(item.work)

    def _cluster(self, item: WorkItem, attempt: int) -> None:
        """Clusters, the output dataset, then the end marker; the intermediate results go."""
        work, plan = item.work, item.plan
        work.record("cluster", 0, "started", attempt)
        key = plan.extra["output_key"]
        staging = self.store.local_staging(key)
        sigs = [work.fetch(result_name("signatures", i)) for i in range(plan.count("signatures"))]
        pairs = [work.fetch(result_name("pairs", i)) for i in range(plan.count("pairs"))]
        shards = [self._fetch_shard(u) for u in plan.shards]
        manifest = compute_cluster(plan, sigs, pairs, self._prior(plan.options), shards, staging)
        out = self._output(plan.dataset_id, key, staging)
        pipeline = plan.extra.get("pipeline")
        event = deduplicated_event(
            plan.job_id,
            DatasetRef.model_validate(plan.extra["source"]),
            out,
            manifest,
            PipelineSpec.model_validate(pipeline) if pipeline else None,
        )
        work.record("cluster", 0, "done", attempt)
        finished = {
            "result": {"dataset": out.model_dump(), **manifest["stats"]},
            "event": event.model_dump(mode="json"),
        }
        work.write_json(FINISHED, finished)
        for stage in ("signatures", "pairs"):  # the index holds what is worth keeping of them
            work.remove(stage)

    def _finished(self, work: WorkFolder) -> FinishedJob:
        """A finished job as its end marker records it, with how its items ran."""
        finished = work.read_json(FINISHED)
        items = summarize(work.records())
        event = CorpusDeduplicated.model_validate(finished["event"])
        return FinishedJob(event, {**finished["result"], "items": items})
