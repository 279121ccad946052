"""gRPC adapter: ``puyu.jobs.v1.Jobs`` for finetune jobs.

The shared servicer does Submit/Get/Watch; this one adds a clear refusal for methods this build
cannot run (instead of the schema's bare "Input should be 'lora'").
"""

from __future__ import annotations

import json

import grpc

from contracts.events import FinetuneRequested
from contracts.proto.puyu.jobs.v1 import jobs_pb2, jobs_pb2_grpc
from services.finetuner.handlers import JOB_KIND
from services.finetuner.methods import UnsupportedRequest, check_method
from shared.bus import Bus
from shared.jobs_api import JobsServicer
from shared.service import ServiceRuntime


def requested_method(spec_json: str) -> str | None:
    """The method a Submit asks for, when its spec_json is readable enough to tell."""
    try:
        raw = json.loads(spec_json or "{}")
    except json.JSONDecodeError:
        return None  # the shared servicer reports malformed JSON
    spec = raw.get("spec") if isinstance(raw, dict) else None
    return str(spec.get("method", "lora")) if isinstance(spec, dict) else None


class FinetuneJobsServicer(JobsServicer):
    def __init__(self, bus: Bus) -> None:
        super().__init__(bus, {JOB_KIND: FinetuneRequested})

    async def Submit(
        self, request: jobs_pb2.SubmitJobRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.JobStatus:
        method = requested_method(request.spec_json) if request.kind == JOB_KIND else None
        if method is not None:
            try:
                check_method(method)
            except UnsupportedRequest as exc:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return await super().Submit(request, context)


def add_finetune_jobs_api(runtime: ServiceRuntime) -> FinetuneJobsServicer:
    servicer = FinetuneJobsServicer(runtime.bus)
    runtime.add_grpc(jobs_pb2_grpc.add_JobsServicer_to_server, servicer, "puyu.jobs.v1.Jobs")
    return servicer
