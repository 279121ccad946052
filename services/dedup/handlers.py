"""Bus adapters: ``CorpusIngested`` (automatic) and ``DedupRequested`` (job) → core → ``CorpusDeduplicated``.

With ``dedup_distributed`` (the default) a job becomes work items (``DedupItemRequested``, a work
queue every dedup replica shares); the worker that finishes a stage's last item publishes the next
stage's items (every replica may try: the deterministic event ids make the bus keep one copy), and
the cluster item ends the job. A replica that dies holding an item stops its heartbeats; after
``dedup_item_ack_wait`` the bus gives the item to another replica. Otherwise the replica that
takes the job runs all of it in one call of the core.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from contracts.events import (
    CorpusIngested,
    DatasetRef,
    DedupItemRequested,
    DedupOptions,
    DedupRequested,
    JobProgress,
    PipelineSpec,
)
from services.dedup.config import DedupSettings
from services.dedup.core import Deduplicator, FinishedJob, ItemDone, StageItems
from shared.bus import Bus, HandlerContext, JobRun, JobStatus
from shared.bus.jobs import TERMINAL_STATES, job_key

log = logging.getLogger(__name__)
KIND = "dedup"


def register_handlers(bus: Bus, core: Deduplicator, settings: DedupSettings) -> None:
    async def deduplicate(
        ctx: HandlerContext[CorpusIngested] | HandlerContext[DedupRequested],
        job_id: str,
        source: DatasetRef,
        options: DedupOptions,
        pipeline: PipelineSpec | None,
    ) -> None:
        async with ctx.job(job_id, KIND, stage="dedup", message=f"deduplicating {source.dataset_id}") as job:
            if settings.dedup_distributed:
                correlation_id = ctx.envelope.correlation_id
                started = await asyncio.to_thread(
                    core.start, job_id, source, options, pipeline, correlation_id
                )
                if isinstance(started, StageItems):
                    message = f"{started.count} {started.stage} items for {source.dataset_id}"
                    await job.progress(started.stage, 0.0, message)
                    await _publish_items(ctx, started)
                    job.continues_elsewhere()
                    return
                finished = started  # asked again after it finished
            else:
                progress = job.thread_progress()
                finished = await asyncio.to_thread(
                    core.deduplicate, job_id, source, options, pipeline, progress
                )
            _succeed(job, finished)

    @bus.handle(DedupRequested, ack_wait=60.0)
    async def on_dedup_requested(ctx: HandlerContext[DedupRequested]) -> None:
        p = ctx.payload
        await deduplicate(ctx, p.job_id, p.dataset, p.options, p.pipeline)

    @bus.handle(CorpusIngested, ack_wait=60.0)
    async def on_corpus_ingested(ctx: HandlerContext[CorpusIngested]) -> None:
        p = ctx.payload
        if not settings.dedup_auto:
            log.info("automatic dedup off: %s left as ingested", p.dataset.dataset_id)
            return
        options = p.pipeline.dedup if p.pipeline else DedupOptions()
        await deduplicate(ctx, f"dedup-{p.job_id}", p.dataset, options, p.pipeline)

    # Work items of distributed jobs: one durable consumer shared by every replica (a work queue).
    @bus.handle(DedupItemRequested, ack_wait=settings.dedup_item_ack_wait)
    async def on_item(ctx: HandlerContext[DedupItemRequested]) -> None:
        p = ctx.payload
        item = await asyncio.to_thread(core.open_item, p.work_uri, p.stage, p.index)
        if await asyncio.to_thread(core.ends_job, item):
            async with ctx.job(item.job_id, KIND, stage="cluster", message="clustering") as job:
                await job.progress("cluster", 0.8, "clustering")  # where the pairs left it, not back at 0
                finished = await asyncio.to_thread(core.end_job, item, ctx.attempt)
                _succeed(job, finished)
            return
        done = await asyncio.to_thread(core.run_item, item, ctx.attempt)
        await _progress_while_running(ctx, done)
        if done.next is not None:
            await _publish_items(ctx, done.next)


def _succeed(job: JobRun, finished: FinishedJob) -> None:
    """The job ends with ``corpus.deduplicated``; its id makes the bus keep one copy."""
    job.succeed(
        finished.message,
        finished.result,
        event=finished.event,
        event_id=f"dedup:{finished.event.source.dataset_id}",
    )


async def _publish_items(ctx: HandlerContext[Any], items: StageItems) -> None:
    run = items.work_uri.rsplit("/", 1)[-1]
    for index in range(items.count):
        await ctx.publish(
            DedupItemRequested(job_id=items.job_id, work_uri=items.work_uri, stage=items.stage, index=index),  # type: ignore[arg-type]
            event_id=f"dedup-item:{run}:{items.stage}:{index}",
        )


async def _progress_while_running(ctx: HandlerContext[Any], done: ItemDone) -> None:
    """Progress on the job board, written only over a running job (compare-and-set): replicas
    report concurrently, and a late report must not turn a finished or failed job back to running."""
    kv = ctx.bus.jobs.kv
    for _ in range(5):
        try:
            entry = await kv.get(job_key(done.job_id))
        except KeyNotFoundError:
            return
        status = JobStatus.model_validate_json(entry.value or b"{}")
        if status.state in TERMINAL_STATES:
            return
        update = status.model_copy(
            update={
                "state": "running",
                "stage": done.stage,
                "fraction": done.fraction,
                "message": done.message,
                "updated_at": time.time(),
            }
        )
        try:
            await kv.update(job_key(done.job_id), update.model_dump_json().encode(), last=entry.revision)
            break
        except KeyWrongLastSequenceError:  # another replica wrote in between: read again
            continue
    await ctx.publish(
        JobProgress(
            job_id=done.job_id, job_kind=KIND, stage=done.stage, fraction=done.fraction, message=done.message
        )
    )
