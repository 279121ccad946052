"""Bus adapter of quantisation: QuantizeRequested -> (base resolved through the registry) -> the
Quantizer core -> CheckpointReady whose lineage names the parent version and the method.

Registered by ``handlers.register_handlers``. The run folder and artifact key derive from the job id,
so a redelivered request overwrites the same run and re-publishes the same ``ckpt:{run_id}:0``.
"""

from __future__ import annotations

import asyncio
import logging

from contracts.events import ArtifactRef, CheckpointReady, ModelRef, QuantizeRequested
from services.finetuner.config import FinetunerSettings
from services.finetuner.core import Finetuner, QuantizeResult
from services.finetuner.registry_client import resolve_base
from shared.auth import ClientAuth
from shared.bus import Bus, HandlerContext
from shared.ports import registry_grpc_target

log = logging.getLogger(__name__)
QUANTIZE_KIND = "quantize"  # also the gRPC Jobs kind


def register_quantize_handler(bus: Bus, core: Finetuner, settings: FinetunerSettings) -> None:
    async def base_artifact(request: QuantizeRequested) -> ArtifactRef:
        if request.base_artifact is not None:
            return request.base_artifact
        # UnknownModel is a Refusal: the job is rejected at once
        return await resolve_base(
            registry_grpc_target(settings),
            request.base,
            settings.finetuner_registry_timeout_s,
            ClientAuth.from_settings(settings),
        )

    @bus.handle(
        QuantizeRequested, max_deliver=settings.finetuner_max_deliver, ack_wait=settings.finetuner_ack_wait_s
    )
    async def on_quantize(ctx: HandlerContext[QuantizeRequested]) -> None:
        p = ctx.payload
        async with ctx.job(p.job_id, QUANTIZE_KIND, stage="prepare") as job:
            base = await base_artifact(p)
            result = await asyncio.to_thread(
                core.quantizer.quantize,
                p.job_id,
                p.spec,
                base=p.base,
                base_artifact=base,
                calibration_uri=p.calibration_uri,
                progress=job.thread_progress(),
            )
            model_name = p.output_model_name or p.base.model_name
            q = result.lineage
            job.succeed(
                f"{model_name}: {q.method} {q.bits}-bit (group {q.group_size}) of "
                f"{p.base.model_name}:{p.base.version}, {result.metrics['compression']:.2f}x smaller",
                result={
                    "run_id": result.run_id,
                    "model_name": model_name,
                    "checkpoint": result.model.uri,
                    "quantization": q.model_dump(),
                    "metrics": result.metrics,
                },
                event=quantized_checkpoint(p, result, model_name),
                event_id=f"ckpt:{result.run_id}:0",
            )
            log.info("quantize %s done: %s", p.job_id, result.model.uri)


def quantized_checkpoint(
    request: QuantizeRequested, result: QuantizeResult, model_name: str
) -> CheckpointReady:
    return CheckpointReady(
        job_id=request.job_id,
        run_id=result.run_id,
        model_name=model_name,
        step=0,
        final=True,
        kind_of_run="quantize",
        method=request.spec.method,
        checkpoint=result.model,
        parent=ModelRef(model_name=request.base.model_name, version=request.base.version),
        hyperparameters=request.spec.model_dump(mode="json"),
        metrics=result.metrics,
        quantization=result.lineage,
    )
