"""Bus adapter: FinetuneRequested -> core -> artifacts -> CheckpointReady.

Output paths and the event id derive from the job id, so a redelivered request overwrites the same
run folder and re-publishes the same ``ckpt:{run_id}:{step}`` event (deduplicated by the stream).
"""

from __future__ import annotations

import asyncio
import logging

from contracts.events import ArtifactRef, CheckpointReady, FinetuneRequested, ModelRef
from services.finetuner.config import FinetunerSettings
from services.finetuner.core import run_finetune
from services.finetuner.data import DataError, check_data
from services.finetuner.engine import check_zero
from services.finetuner.methods import UnsupportedRequest, check_method, resolve_device
from services.finetuner.registry_client import UnknownModel, resolve_base
from shared.artifacts import ArtifactStore
from shared.bus import Bus, HandlerContext, JobRejected
from shared.bus.jobs import job_key
from shared.ports import registry_grpc_target

log = logging.getLogger(__name__)
JOB_KIND = "finetune"  # also the gRPC Jobs kind


def run_id_for(job_id: str) -> str:
    return f"ft-{job_key(job_id)}"


async def _base_artifact(settings: FinetunerSettings, payload: FinetuneRequested) -> ArtifactRef:
    if payload.base_artifact is not None:
        return payload.base_artifact
    try:
        return await resolve_base(
            registry_grpc_target(settings), payload.base, settings.finetuner_registry_timeout_s
        )
    except UnknownModel as exc:
        raise JobRejected(str(exc)) from exc


def register_handlers(bus: Bus, settings: FinetunerSettings, store: ArtifactStore) -> None:
    @bus.handle(
        FinetuneRequested, max_deliver=settings.finetuner_max_deliver, ack_wait=settings.finetuner_ack_wait_s
    )
    async def on_finetune(ctx: HandlerContext[FinetuneRequested]) -> None:
        p = ctx.payload
        await ctx.bus.jobs.update(
            p.job_id, JOB_KIND, state="running", stage="prepare", correlation_id=ctx.envelope.correlation_id
        )
        try:
            check_method(p.spec.method, resolve_device(settings.finetuner_device))
            check_zero(p.spec)
        except UnsupportedRequest as exc:
            raise JobRejected(str(exc)) from exc
        base = await _base_artifact(settings, p)
        try:
            base_dir = await asyncio.to_thread(store.fetch, base.uri)
            dataset = await asyncio.to_thread(store.fetch, p.dataset_uri)
        except FileNotFoundError as exc:
            raise JobRejected(str(exc)) from exc
        errors = await asyncio.to_thread(check_data, dataset, p.spec.data_format, p.spec.method)
        if errors:
            raise JobRejected(f"invalid dataset {p.dataset_uri}: " + "; ".join(errors[:5]))

        run_id = run_id_for(p.job_id)
        staging = store.local_staging(f"runs/{run_id}")
        base_ref = {"model_name": p.base.model_name, "version": p.base.version, **base.model_dump()}
        progress = ctx.progress_from_thread(ctx.payload.job_id, JOB_KIND)
        try:
            outcome = await asyncio.to_thread(
                run_finetune,
                base_dir,
                dataset,
                p.spec,
                staging,
                base_ref=base_ref,
                dataset_uri=p.dataset_uri,
                device=settings.finetuner_device,
                num_threads=settings.finetuner_num_threads,
                progress=progress,
            )
        except (UnsupportedRequest, DataError, ValueError) as exc:
            raise JobRejected(str(exc)) from exc
        finally:
            await progress.flush()

        adapter = (
            await asyncio.to_thread(store.put_dir, outcome.adapter_dir, f"runs/{run_id}/adapter")
            if outcome.adapter_dir is not None
            else None
        )
        model = await asyncio.to_thread(store.put_dir, outcome.model_dir, f"runs/{run_id}/model")
        model_name = p.output_model_name or p.base.model_name
        event = CheckpointReady(
            job_id=p.job_id,
            run_id=run_id,
            model_name=model_name,
            step=outcome.steps,
            final=True,
            kind_of_run="finetune",
            method=p.spec.method,
            checkpoint=model,
            adapter=adapter,
            parent=ModelRef(model_name=p.base.model_name, version=p.base.version),
            hyperparameters=p.spec.model_dump(mode="json"),
            metrics=outcome.metrics,
        )
        await ctx.publish(event, event_id=f"ckpt:{run_id}:{outcome.steps}")
        await ctx.bus.jobs.update(
            p.job_id,
            JOB_KIND,
            state="succeeded",
            stage="done",
            fraction=1.0,
            message=f"{model_name}: loss {outcome.metrics['eval_loss_before']:.3f} -> "
            f"{outcome.metrics['eval_loss_after']:.3f}",
            result={
                "run_id": run_id,
                "model_name": model_name,
                "checkpoint": model.uri,
                "adapter": adapter.uri if adapter else None,
                "metrics": outcome.metrics,
            },
        )
        log.info("finetune %s done: %s", p.job_id, model.uri)
