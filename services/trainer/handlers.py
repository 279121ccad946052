"""Bus adapters: TrainRequested jobs, cancel requests, and CorpusDeduplicated events that carry a
pipeline train spec.

The core controls the run (submitted to the configured launcher, watched, cancelled); these adapters
publish what it reports: progress, each checkpoint (``ckpt:{run}:{step}``: a repeat after a
redelivery is the same event, dropped in JetStream's duplicate window and registered once by the
registry), and the job's outcome."""

from __future__ import annotations

import asyncio
import logging
import threading

from contracts.events import CheckpointReady, CorpusDeduplicated, TrainRequested
from contracts.events.training import TrainCancelRequested
from services.trainer.config import TrainerSettings
from services.trainer.core import StoredCheckpoint, Trainer, TrainingCancelled, run_id_for
from shared.bus import Bus, HandlerContext

KIND = "train"
log = logging.getLogger(__name__)


def train_request_from(event: CorpusDeduplicated) -> TrainRequested | None:
    if event.pipeline is None or event.pipeline.train is None:
        return None
    return TrainRequested(
        job_id=f"train-{event.dataset.dataset_id}", datasets=[event.dataset], spec=event.pipeline.train
    )


def register_handlers(bus: Bus, core: Trainer, settings: TrainerSettings) -> None:
    @bus.handle(TrainRequested, ack_wait=60.0, max_deliver=settings.trainer_max_deliver)
    async def on_train_requested(ctx: HandlerContext[TrainRequested]) -> None:
        async with core.run_slot():
            await _train(ctx, core, settings)

    @bus.handle(CorpusDeduplicated)
    async def on_corpus_deduplicated(ctx: HandlerContext[CorpusDeduplicated]) -> None:
        request = train_request_from(ctx.payload)
        if request is None:
            return
        # Hand it to the job queue (one replica trains it, with its own retries and status).
        await bus.jobs.update(
            request.job_id, KIND, state="queued", correlation_id=ctx.envelope.correlation_id
        )
        await ctx.publish(request, event_id=f"train-request:{request.job_id}")

    @bus.handle(TrainCancelRequested)
    async def on_cancel_requested(ctx: HandlerContext[TrainCancelRequested]) -> None:
        """One replica hears it (one durable per service) and marks the job cancelled on the board;
        the replica running it watches the board and stops; a queued job is skipped when it arrives."""
        job_id = ctx.payload.job_id
        core.cancel(job_id)
        status = await bus.jobs.get(job_id)
        if status is None or status.kind != KIND:
            log.warning("cancel requested for %r, which is no train job known here", job_id)
            return
        if status.state in ("queued", "running"):
            await bus.jobs.update(job_id, KIND, state="cancelled", message=ctx.payload.reason)


async def _train(ctx: HandlerContext[TrainRequested], core: Trainer, settings: TrainerSettings) -> None:
    req, loop = ctx.payload, asyncio.get_running_loop()

    def checkpoint_ready(stored: StoredCheckpoint) -> CheckpointReady:
        return CheckpointReady(
            job_id=req.job_id,
            run_id=stored.run_id,
            model_name=req.spec.model_name,
            step=stored.step,
            final=stored.final,
            checkpoint=stored.checkpoint,
            datasets=req.datasets,
            hyperparameters=req.spec.model_dump(mode="json"),
            metrics=stored.metrics,
        )

    def announce(stored: StoredCheckpoint) -> None:  # runs in the training thread
        if stored.final:
            return  # the job's outcome: the lifecycle publishes it once the board says succeeded
        publish = ctx.publish(checkpoint_ready(stored), event_id=f"ckpt:{stored.run_id}:{stored.step}")
        asyncio.run_coroutine_threadsafe(publish, loop).result(timeout=60)

    async with ctx.job(req.job_id, KIND, stage="starting", message=f"run {run_id_for(req.job_id)}") as job:
        if job.cancelled:
            return  # cancelled while it waited in the queue
        progress = job.thread_progress(settings.trainer_progress_interval)
        with core.cancel_flag(req.job_id) as cancel:
            watcher = asyncio.create_task(_watch_cancel(ctx.bus, req.job_id, cancel))
            try:
                outcome = await asyncio.to_thread(
                    core.train,
                    req.job_id,
                    req.spec,
                    req.datasets,
                    progress=progress,
                    on_checkpoint=announce,
                    cancel=cancel,
                )
            except TrainingCancelled as exc:
                if core.stopping:
                    raise  # not the user's wish: the redelivered job resumes from the saved state
                job.cancel(str(exc))
                return
            finally:
                watcher.cancel()
        last = outcome.last
        if last is None:
            job.succeed("no checkpoint", result=outcome.result())
            return
        job.succeed(
            f"checkpoint {last.checkpoint.uri}",
            result=outcome.result(),
            event=checkpoint_ready(last),
            event_id=f"ckpt:{last.run_id}:{last.step}",
        )


async def _watch_cancel(bus: Bus, job_id: str, flag: threading.Event) -> None:
    # The board's history, not its latest value: a progress write may overwrite "cancelled".
    async for status in bus.jobs.watch(job_id):
        if status.state == "cancelled":
            flag.set()
            return
