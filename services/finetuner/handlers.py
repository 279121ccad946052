"""Bus adapter: FinetuneRequested -> (base resolved through the registry) -> core -> CheckpointReady.

The core is the run's controller (submitted to the configured launcher, watched, cancelled when the
job board says the job was cancelled). It derives the run folder and artifact keys from the job id,
so a redelivered request re-attaches to the same run and re-publishes the same
``ckpt:{run_id}:{step}`` event (deduplicated by the stream, registered once by the registry).
"""

from __future__ import annotations

import asyncio
import logging
import threading

from contracts.events import ArtifactRef, CheckpointReady, FinetuneRequested, ModelRef
from services.finetuner.config import FinetunerSettings
from services.finetuner.core import Finetuner, FinetuneResult
from services.finetuner.core.training import FinetuneCancelled
from services.finetuner.quantize_handlers import register_quantize_handler
from services.finetuner.registry_client import resolve_base
from shared.auth import ClientAuth
from shared.bus import Bus, HandlerContext
from shared.ports import registry_grpc_target

log = logging.getLogger(__name__)
JOB_KIND = "finetune"  # also the gRPC Jobs kind


def register_handlers(bus: Bus, core: Finetuner, settings: FinetunerSettings) -> None:
    async def base_artifact(request: FinetuneRequested) -> ArtifactRef:
        if request.base_artifact is not None:
            return request.base_artifact
        # UnknownModel is a Refusal: the job is rejected at once
        target = registry_grpc_target(settings)
        return await resolve_base(
            target, request.base, settings.finetuner_registry_timeout_s, ClientAuth.from_settings(settings)
        )

    @bus.handle(
        FinetuneRequested, max_deliver=settings.finetuner_max_deliver, ack_wait=settings.finetuner_ack_wait_s
    )
    async def on_finetune(ctx: HandlerContext[FinetuneRequested]) -> None:
        p = ctx.payload
        async with ctx.job(p.job_id, JOB_KIND, stage="prepare") as job:
            if job.cancelled:
                return  # cancelled while it waited in the queue
            base = await base_artifact(p)
            with core.cancel_flag(p.job_id) as cancel:
                watcher = asyncio.create_task(_watch_cancel(ctx.bus, p.job_id, cancel))
                try:
                    result = await asyncio.to_thread(
                        core.finetune,
                        p.job_id,
                        p.spec,
                        base=p.base,
                        base_artifact=base,
                        dataset_uri=p.dataset_uri,
                        progress=job.thread_progress(),
                        cancel=cancel,
                    )
                except FinetuneCancelled as exc:
                    if core.stopping:
                        raise  # not the user's wish: the redelivered job resumes the run
                    job.cancel(str(exc))
                    return
                finally:
                    watcher.cancel()
            model_name = p.output_model_name or p.base.model_name
            metrics = result.metrics
            job.succeed(
                f"{model_name}: loss {metrics['eval_loss_before']:.3f} -> {metrics['eval_loss_after']:.3f}",
                result={
                    "run_id": result.run_id,
                    "model_name": model_name,
                    "checkpoint": result.model.uri,
                    "adapter": result.adapter.uri if result.adapter else None,
                    "metrics": metrics,
                },
                event=checkpoint_ready(p, result, model_name),
                event_id=f"ckpt:{result.run_id}:{result.steps}",
            )
            log.info("finetune %s done: %s", p.job_id, result.model.uri)

    register_quantize_handler(bus, core, settings)  # quantize.requested: a version quantised into a new one


async def _watch_cancel(bus: Bus, job_id: str, flag: threading.Event) -> None:
    # The board's history, not its latest value: a progress write may overwrite "cancelled".
    async for status in bus.jobs.watch(job_id):
        if status.state == "cancelled":
            flag.set()
            return


def checkpoint_ready(request: FinetuneRequested, result: FinetuneResult, model_name: str) -> CheckpointReady:
    return CheckpointReady(
        job_id=request.job_id,
        run_id=result.run_id,
        model_name=model_name,
        step=result.steps,
        final=True,
        kind_of_run="finetune",
        method=request.spec.method,
        checkpoint=result.model,
        adapter=result.adapter,
        parent=ModelRef(model_name=request.base.model_name, version=request.base.version),
        hyperparameters=request.spec.model_dump(mode="json"),
        metrics=result.metrics,
    )
