"""Bus adapters: TrainRequested jobs, and CorpusDeduplicated events that carry a pipeline train spec."""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from typing import Any

from contracts.events import CheckpointReady, CorpusDeduplicated, TrainRequested
from contracts.events.training import TrainCancelRequested
from services.trainer.config import TrainerSettings
from services.trainer.core import (
    CheckpointInfo,
    DatasetError,
    TrainConfigError,
    TrainingCancelled,
    TrainJob,
    run_training,
)
from shared.artifacts import ArtifactStore
from shared.bus import Bus, HandlerContext, JobRejected

KIND = "train"
log = logging.getLogger(__name__)


def run_id_for(job_id: str) -> str:
    """The run id is a function of the job id: a redelivered job resumes the same run."""
    return "pretrain-" + re.sub(r"[^A-Za-z0-9._-]", "_", job_id)


def train_request_from(event: CorpusDeduplicated) -> TrainRequested | None:
    if event.pipeline is None or event.pipeline.train is None:
        return None
    return TrainRequested(
        job_id=f"train-{event.dataset.dataset_id}", datasets=[event.dataset], spec=event.pipeline.train
    )


class TrainHandlers:
    def __init__(self, bus: Bus, store: ArtifactStore, settings: TrainerSettings) -> None:
        self.bus, self.store, self.settings = bus, store, settings
        self.stopping = False  # the service shuts down: a run stops, keeps its state, is redelivered
        self._running: dict[str, threading.Event] = {}  # job id -> its cancel flag
        self._one_at_a_time = asyncio.Lock()  # torch threads are process-wide: one run per process

    def register(self) -> None:
        self.bus.handle(TrainRequested, ack_wait=60.0, max_deliver=self.settings.trainer_max_deliver)(
            self.on_train_requested
        )
        self.bus.handle(CorpusDeduplicated)(self.on_corpus_deduplicated)
        self.bus.handle(TrainCancelRequested)(self.on_cancel_requested)

    def stop_all(self) -> None:
        self.stopping = True
        for flag in self._running.values():
            flag.set()

    async def on_cancel_requested(self, ctx: HandlerContext[TrainCancelRequested]) -> None:
        """One replica hears it (one durable per service) and marks the job cancelled on the board;
        the replica running it watches the board and stops; a queued job is skipped when it arrives."""
        job_id = ctx.payload.job_id
        if (flag := self._running.get(job_id)) is not None:
            flag.set()
        status = await self.bus.jobs.get(job_id)
        if status is None or status.kind != KIND:
            log.warning("cancel requested for %r, which is no train job known here", job_id)
            return
        if status.state in ("queued", "running"):
            await self.bus.jobs.update(job_id, KIND, state="cancelled", message=ctx.payload.reason)

    async def _watch_cancel(self, job_id: str, flag: threading.Event) -> None:
        # The board's history, not its latest value: a progress write may overwrite "cancelled".
        async for status in self.bus.jobs.watch(job_id):
            if status.state == "cancelled":
                flag.set()
                return

    async def on_corpus_deduplicated(self, ctx: HandlerContext[CorpusDeduplicated]) -> None:
        request = train_request_from(ctx.payload)
        if request is None:
            return
        # Hand it to the job queue (one replica trains it, with its own retries and status).
        await self.bus.jobs.update(
            request.job_id, KIND, state="queued", correlation_id=ctx.envelope.correlation_id
        )
        await ctx.publish(request, event_id=f"train-request:{request.job_id}")

    async def on_train_requested(self, ctx: HandlerContext[TrainRequested]) -> None:
        async with self._one_at_a_time:
            await self._train(ctx)

    async def _train(self, ctx: HandlerContext[TrainRequested]) -> None:
        req, loop = ctx.payload, asyncio.get_running_loop()
        run_id = run_id_for(req.job_id)
        before = await self.bus.jobs.get(req.job_id)
        if before is not None and before.state == "cancelled":
            return  # cancelled while it waited in the queue
        await self.bus.jobs.update(
            req.job_id,
            KIND,
            state="running",
            stage="starting",
            correlation_id=ctx.envelope.correlation_id,
            message=f"run {run_id}",
        )
        job = TrainJob(
            run_id=run_id,
            spec=req.spec,
            sources=[d.manifest_uri for d in req.datasets],
            datasets=[d.model_dump(mode="json") for d in req.datasets],
        )
        published: dict[str, Any] = {}

        def on_checkpoint(info: CheckpointInfo) -> None:  # runs in the training thread
            ref = self.store.put_dir(info.path, f"runs/{run_id}/checkpoints/step-{info.step}")
            event = CheckpointReady(
                job_id=req.job_id,
                run_id=run_id,
                model_name=req.spec.model_name,
                step=info.step,
                final=info.final,
                checkpoint=ref,
                datasets=req.datasets,
                hyperparameters=req.spec.model_dump(mode="json"),
                metrics=info.metrics,
            )
            asyncio.run_coroutine_threadsafe(
                ctx.publish(event, event_id=f"ckpt:{run_id}:{info.step}"), loop
            ).result(timeout=60)
            published.update(checkpoint=ref.model_dump(mode="json"), step=info.step, metrics=info.metrics)

        progress = ctx.progress_from_thread(req.job_id, KIND, self.settings.trainer_progress_interval)
        cancel = self._running[req.job_id] = threading.Event()
        if self.stopping:
            cancel.set()
        watcher = asyncio.create_task(self._watch_cancel(req.job_id, cancel))
        try:
            await asyncio.to_thread(
                run_training,
                job,
                self.store.local_staging(f"runs/{run_id}"),
                self.store,
                progress=progress,
                on_checkpoint=on_checkpoint,
                cancel=cancel,
                device=self.settings.trainer_device,
            )
        except (TrainConfigError, DatasetError) as exc:
            raise JobRejected(f"train job {req.job_id}: {exc}") from exc
        except TrainingCancelled as exc:
            if self.stopping:
                raise  # not the user's wish: the redelivered job resumes from the saved state
            await progress.flush()
            await self.bus.jobs.update(
                req.job_id, KIND, state="cancelled", stage="cancelled", message=str(exc)
            )
            return
        finally:
            watcher.cancel()
            self._running.pop(req.job_id, None)
            await progress.flush()
        await self.bus.jobs.update(
            req.job_id,
            KIND,
            state="succeeded",
            stage="done",
            fraction=1.0,
            message=f"checkpoint {published.get('checkpoint', {}).get('uri')}",
            result={"run_id": run_id, **published},
        )
