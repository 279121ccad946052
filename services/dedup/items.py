"""Bus adapters of the distributed path: a dedup job → work items that every dedup replica takes.

``start_job`` plans the job, stores the plan in the job's work folder and publishes the first
stage's items (``DedupItemRequested``, a work queue shared by the replicas). ``run_item`` does one
item: it skips an item whose result is stored, else computes and stores it; the worker that
stores a stage's last result publishes the next stage's items (every replica may try: the
deterministic event ids make the bus keep one copy). The cluster item writes the dataset,
publishes ``corpus.deduplicated`` and ends the job. A replica that dies holding an item stops its
heartbeats; after ``dedup_item_ack_wait`` the bus gives the item to another replica.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from pathlib import Path
from typing import Any

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from contracts.events import (
    CorpusDeduplicated,
    DatasetRef,
    DedupItemRequested,
    DedupOptions,
    JobProgress,
    PipelineSpec,
)
from services.dedup.config import DedupSettings
from services.dedup.core import DedupInputError
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
from services.dedup.core.pipeline import load_prior_index
from services.dedup.core.stages import ShardSignatures
from services.dedup.work import WorkFolder, summarize
from shared.artifacts import ArtifactStore
from shared.bus import HandlerContext, JobRejected, JobStatus
from shared.bus.jobs import TERMINAL_STATES, job_key

KIND = "dedup"
# Share of the job's progress at the start of each stage.
_PROGRESS = {"signatures": 0.0, "pairs": 0.6, "cluster": 0.8}


def deduplicated_event(
    job_id: str,
    source: DatasetRef,
    dataset_id: str,
    store: ArtifactStore,
    key: str,
    staging: Path,
    manifest: dict[str, Any],
    pipeline: PipelineSpec | None,
) -> CorpusDeduplicated:
    """``corpus.deduplicated`` for an output written under ``key`` (staged in ``staging``)."""
    out = DatasetRef(
        dataset_id=dataset_id,
        manifest_uri=store.uri(f"{key}/manifest.json"),
        digest=hashlib.sha256((staging / "manifest.json").read_bytes()).hexdigest(),
    )
    stats = manifest["stats"]
    return CorpusDeduplicated(
        job_id=job_id,
        source=source,
        dataset=out,
        documents_in=stats["documents_in"],
        documents_out=stats["documents_out"],
        exact_duplicates=stats["exact_duplicates"],
        near_duplicates=stats["near_duplicates"],
        pipeline=pipeline,
    )


def output_id(source_id: str) -> str:
    return f"{source_id}-dedup"


def work_uri(store: ArtifactStore, job_id: str, source: DatasetRef, options: DedupOptions) -> str:
    """The job's work folder: a new one when the input or the options change."""
    raw = json.dumps([source.digest, options.model_dump(mode="json")], sort_keys=True)
    return store.uri(f"dedup-work/{job_key(job_id)}-{hashlib.sha256(raw.encode()).hexdigest()[:12]}")


def _shard_uri(folder: Path, folder_uri: str, shard: Path) -> str:
    try:
        return f"{folder_uri}/{shard.relative_to(folder).as_posix()}"
    except ValueError:  # a shard outside the dataset folder (an absolute path in the manifest)
        return shard.resolve().as_uri()


def _prior(store: ArtifactStore, options: DedupOptions) -> ShardSignatures | None:
    """The persisted indexes of ``options.against_indexes`` (URIs), fetched to this replica."""
    try:
        local = [str(store.fetch(u)) for u in options.against_indexes]
    except FileNotFoundError as exc:
        raise JobRejected(f"dedup index: {exc}") from exc
    try:
        return load_prior_index(local, options)
    except DedupInputError as exc:
        raise JobRejected(str(exc)) from exc


async def _publish_stage(ctx: HandlerContext[Any], plan: Plan, work: WorkFolder, stage: str) -> None:
    run = work.uri.rsplit("/", 1)[-1]
    for index in range(plan.count(stage)):
        await ctx.publish(
            DedupItemRequested(job_id=plan.job_id, work_uri=work.uri, stage=stage, index=index),  # type: ignore[arg-type]
            event_id=f"dedup-item:{run}:{stage}:{index}",
        )


async def start_job(
    ctx: HandlerContext[Any],
    settings: DedupSettings,
    job_id: str,
    source: DatasetRef,
    folder: Path,
    options: DedupOptions,
    pipeline: PipelineSpec | None,
) -> None:
    """Plan the job and hand out its first items (``folder``: the source dataset, local)."""
    store = ArtifactStore(settings.artifact_root_uri)
    work = WorkFolder(store, work_uri(store, job_id, source, options))
    if await asyncio.to_thread(work.exists, FINISHED):  # asked again after it finished: report it
        await _finished(ctx, work, await asyncio.to_thread(work.read_plan))
        return
    await asyncio.to_thread(_prior, store, options)  # refuse an incomparable index now, not later
    dataset_id = output_id(source.dataset_id)
    extra = {
        "source": source.model_dump(mode="json"),
        "pipeline": pipeline.model_dump(mode="json") if pipeline else None,
        "output_key": f"datasets/{dataset_id}",
        "correlation_id": ctx.envelope.correlation_id,
    }
    folder_uri = source.manifest_uri.rsplit("/", 1)[0]
    try:
        plan = await asyncio.to_thread(
            make_plan,
            job_id,
            dataset_id,
            [folder],
            options,
            lambda shard: _shard_uri(folder, folder_uri, shard),
            settings.dedup_bands_per_item,
            extra,
        )
    except DedupInputError as exc:
        raise JobRejected(str(exc)) from exc
    await asyncio.to_thread(work.write_plan, plan)
    first = plan.next_stage(None)
    assert first is not None  # signatures: make_plan refuses a plan without shards
    await _progress(ctx, job_id, first, 0.0, f"{plan.count(first)} {first} items for {source.dataset_id}")
    await _publish_stage(ctx, plan, work, first)


async def run_item(ctx: HandlerContext[DedupItemRequested], settings: DedupSettings) -> None:
    p = ctx.payload
    store = ArtifactStore(settings.artifact_root_uri)
    work = WorkFolder(store, p.work_uri)
    if not await asyncio.to_thread(work.exists, PLAN):
        raise JobRejected(f"dedup item {p.stage}/{p.index}: no plan in {p.work_uri}")
    plan = await asyncio.to_thread(work.read_plan)
    if p.index >= plan.count(p.stage):
        raise JobRejected(f"dedup item {p.stage}/{p.index}: the plan has {plan.count(p.stage)} such items")
    if await asyncio.to_thread(work.exists, FINISHED):  # a late copy: the job is over
        await _finished(ctx, work, plan)
        return
    name = result_name(p.stage, p.index)
    if p.stage == "cluster":
        await _cluster(ctx, store, work, plan)
        return
    if not await asyncio.to_thread(work.exists, name):  # else: finished by another delivery
        await asyncio.to_thread(work.record, p.stage, p.index, "started", ctx.attempt)
        try:
            info = await asyncio.to_thread(_compute, store, work, plan, p.stage, p.index)
        except DedupInputError as exc:
            raise JobRejected(str(exc)) from exc
        await asyncio.to_thread(work.record, p.stage, p.index, "done", ctx.attempt, **info)
    done = await asyncio.to_thread(work.names, p.stage)
    total = plan.count(p.stage)
    finished = sum(result_name(p.stage, i) in done for i in range(total))
    span = {"signatures": 0.6, "pairs": 0.2}[p.stage]
    await _progress(
        ctx,
        plan.job_id,
        p.stage,
        _PROGRESS[p.stage] + span * finished / total,
        f"{finished}/{total} {p.stage}",
    )
    nxt = plan.next_stage(p.stage)
    if finished == total and nxt is not None:
        await _publish_stage(ctx, plan, work, nxt)


async def _progress(ctx: HandlerContext[Any], job_id: str, stage: str, fraction: float, message: str) -> None:
    """Progress on the job board, written only over a running job (compare-and-set): replicas
    report concurrently, and a late report must not turn a finished or failed job back to running."""
    kv = ctx.bus.jobs.kv
    for _ in range(5):
        try:
            entry = await kv.get(job_key(job_id))
        except KeyNotFoundError:
            return
        status = JobStatus.model_validate_json(entry.value or b"{}")
        if status.state in TERMINAL_STATES:
            return
        update = status.model_copy(update={"state": "running", "stage": stage, "fraction": fraction})
        update = update.model_copy(update={"message": message, "updated_at": time.time()})
        try:
            await kv.update(job_key(job_id), update.model_dump_json().encode(), last=entry.revision)
            break
        except KeyWrongLastSequenceError:  # another replica wrote in between: read again
            continue
    await ctx.publish(
        JobProgress(job_id=job_id, job_kind=KIND, stage=stage, fraction=fraction, message=message)
    )


def _compute(store: ArtifactStore, work: WorkFolder, plan: Plan, stage: str, index: int) -> dict[str, Any]:
    """Blocking: one signatures or pairs item, its result stored atomically."""
    name = result_name(stage, index)
    out = work.staging(name)
    if stage == "signatures":
        shard = _fetch(store, plan.shards[index])
        info = {"documents": compute_signatures(shard, plan.options, out)}
    else:
        sigs = [work.fetch(result_name("signatures", i)) for i in range(plan.count("signatures"))]
        info = {"pairs": compute_pairs(plan, index, sigs, _prior(store, plan.options), out)}
    work.store_result(out, name)
    return info


def _fetch(store: ArtifactStore, uri: str) -> Path:
    try:
        return store.fetch(uri)
    except FileNotFoundError as exc:
        raise DedupInputError(f"input shard {uri}: {exc}") from exc


async def _cluster(ctx: HandlerContext[Any], store: ArtifactStore, work: WorkFolder, plan: Plan) -> None:
    """The last item: clusters, the output dataset, ``corpus.deduplicated``, the job's end."""
    attempt = ctx.attempt
    await asyncio.to_thread(work.record, "cluster", 0, "started", attempt)
    key = plan.extra["output_key"]
    staging = store.local_staging(key)

    def run() -> dict[str, Any]:
        sigs = [work.fetch(result_name("signatures", i)) for i in range(plan.count("signatures"))]
        pairs = [work.fetch(result_name("pairs", i)) for i in range(plan.count("pairs"))]
        shards = [_fetch(store, u) for u in plan.shards]
        manifest = compute_cluster(plan, sigs, pairs, _prior(store, plan.options), shards, staging)
        store.put_dir(staging, key)
        return manifest

    try:
        manifest = await asyncio.to_thread(run)
    except DedupInputError as exc:
        raise JobRejected(str(exc)) from exc
    pipeline = plan.extra.get("pipeline")
    event = deduplicated_event(
        plan.job_id,
        DatasetRef.model_validate(plan.extra["source"]),
        plan.dataset_id,
        store,
        key,
        staging,
        manifest,
        PipelineSpec.model_validate(pipeline) if pipeline else None,
    )
    stats = manifest["stats"]
    out = event.dataset
    await asyncio.to_thread(work.record, "cluster", 0, "done", attempt)
    # The end marker holds the event: whoever finds the job over (a late copy of an item, the
    # job asked again) ends it the same way, and the event's id makes the bus keep one copy.
    finished = {"result": {"dataset": out.model_dump(), **stats}, "event": event.model_dump(mode="json")}
    await asyncio.to_thread(work.write_json, FINISHED, finished)
    for stage in ("signatures", "pairs"):  # the index holds what is worth keeping of them
        await asyncio.to_thread(work.remove, stage)
    await _finished(ctx, work, plan)


async def _finished(ctx: HandlerContext[Any], work: WorkFolder, plan: Plan) -> None:
    """End a finished job: succeeded on the job board (with how its items ran), then the event.

    Idempotent: the board gets the same state, the bus keeps one copy of the event."""
    finished = await asyncio.to_thread(work.read_json, FINISHED)
    result = finished["result"]
    items = summarize(await asyncio.to_thread(work.records))
    await ctx.bus.jobs.update(
        plan.job_id,
        KIND,
        state="succeeded",
        stage="done",
        fraction=1.0,
        correlation_id=plan.extra.get("correlation_id"),
        message=f"{result['documents_out']}/{result['documents_in']} documents kept",
        result={**result, "items": items},
    )
    event = CorpusDeduplicated.model_validate(finished["event"])
    await ctx.publish(event, event_id=f"dedup:{event.source.dataset_id}")
