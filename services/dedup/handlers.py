"""Bus adapters: ``CorpusIngested`` (automatic) and ``DedupRequested`` (job) → core → ``CorpusDeduplicated``.

With ``dedup_distributed`` (the default) a job becomes work items shared by every dedup replica
(``items.py``); otherwise the replica that takes the job runs all of it in one call of the core.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from pathlib import Path

from contracts.events import (
    CorpusIngested,
    DatasetRef,
    DedupItemRequested,
    DedupOptions,
    DedupRequested,
    PipelineSpec,
)
from services.dedup.config import DedupSettings
from services.dedup.core import DedupInputError, run_dedup
from services.dedup.items import KIND, deduplicated_event, output_id, run_item, start_job
from shared.artifacts import ArtifactStore
from shared.bus import Bus, HandlerContext, JobRejected

log = logging.getLogger(__name__)

__all__ = ["KIND", "output_id", "register_handlers"]


def _source_folder(store: ArtifactStore, source: DatasetRef) -> Path:
    """The source dataset's folder, local, after checking its manifest against the digest."""
    folder_uri = source.manifest_uri.rsplit("/", 1)[0]
    try:
        folder = store.fetch(folder_uri)
    except FileNotFoundError as exc:
        raise JobRejected(f"dataset {source.dataset_id}: {exc}") from exc
    manifest_path = folder / "manifest.json"
    if not manifest_path.is_file():
        raise JobRejected(f"dataset {source.dataset_id}: no manifest at {source.manifest_uri}")
    digest = hashlib.sha256(manifest_path.read_bytes()).hexdigest()
    if digest != source.digest:
        raise JobRejected(
            f"dataset {source.dataset_id}: manifest digest {digest} != expected {source.digest}"
        )
    return folder


async def deduplicate(
    ctx: HandlerContext[CorpusIngested] | HandlerContext[DedupRequested],
    settings: DedupSettings,
    job_id: str,
    source: DatasetRef,
    options: DedupOptions,
    pipeline: PipelineSpec | None,
) -> None:
    bus = ctx.bus
    await bus.jobs.update(
        job_id,
        KIND,
        state="running",
        stage="dedup",
        fraction=0.0,
        correlation_id=ctx.envelope.correlation_id,
        message=f"deduplicating {source.dataset_id}",
    )
    store = ArtifactStore(settings.artifact_root_uri)
    folder = await asyncio.to_thread(_source_folder, store, source)
    if settings.dedup_distributed:
        await start_job(ctx, settings, job_id, source, folder, options, pipeline)
        return
    if options.against_indexes:  # earlier dedup outputs, by URI: local folders for the core
        try:
            local = [str(await asyncio.to_thread(store.fetch, u)) for u in options.against_indexes]
        except FileNotFoundError as exc:
            raise JobRejected(f"dedup index: {exc}") from exc
        options = options.model_copy(update={"against_indexes": local})
    dataset_id = output_id(source.dataset_id)
    key = f"datasets/{dataset_id}"
    staging = store.local_staging(key)
    try:
        manifest = await asyncio.to_thread(
            run_dedup,
            [folder],
            staging,
            dataset_id,
            options,
            ctx.progress_from_thread(job_id, KIND),
            settings.dedup_workers,
        )
    except DedupInputError as exc:
        raise JobRejected(str(exc)) from exc
    store.put_dir(staging, key)
    event = deduplicated_event(job_id, source, dataset_id, store, key, staging, manifest, pipeline)
    await ctx.publish(event, event_id=f"dedup:{source.dataset_id}")
    out, stats = event.dataset, manifest["stats"]
    await bus.jobs.update(
        job_id,
        KIND,
        state="succeeded",
        stage="done",
        fraction=1.0,
        message=f"{stats['documents_out']}/{stats['documents_in']} documents kept",
        result={"dataset": out.model_dump(), **stats},
    )


def register_handlers(bus: Bus, settings: DedupSettings) -> None:
    @bus.handle(DedupRequested, ack_wait=60.0)
    async def on_dedup_requested(ctx: HandlerContext[DedupRequested]) -> None:
        p = ctx.payload
        await deduplicate(ctx, settings, p.job_id, p.dataset, p.options, p.pipeline)

    @bus.handle(CorpusIngested, ack_wait=60.0)
    async def on_corpus_ingested(ctx: HandlerContext[CorpusIngested]) -> None:
        p = ctx.payload
        if not settings.dedup_auto:
            log.info("automatic dedup off: %s left as ingested", p.dataset.dataset_id)
            return
        options = p.pipeline.dedup if p.pipeline else DedupOptions()
        await deduplicate(ctx, settings, f"dedup-{p.job_id}", p.dataset, options, p.pipeline)

    # Work items of distributed jobs: one durable consumer shared by every replica (a work queue).
    @bus.handle(DedupItemRequested, ack_wait=settings.dedup_item_ack_wait)
    async def on_item(ctx: HandlerContext[DedupItemRequested]) -> None:
        await run_item(ctx, settings)
