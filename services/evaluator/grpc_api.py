"""gRPC adapter: puyu.jobs.v1.Jobs for kind "evaluate" (the shared Jobs servicer, plus task-name checks
at submit time so a typo is an INVALID_ARGUMENT naming it rather than a failed job later)."""

from __future__ import annotations

import json

import grpc

from contracts.events import EvaluateRequested
from contracts.proto.puyu.jobs.v1 import jobs_pb2, jobs_pb2_grpc
from services.evaluator.handlers import JOB_KIND
from services.evaluator.tasks import UnknownTask, resolve_tasks
from shared.bus import Bus
from shared.jobs_api import JobsServicer
from shared.service import ServiceRuntime


class EvaluatorJobsServicer(JobsServicer):
    def __init__(self, bus: Bus) -> None:
        super().__init__(bus, {JOB_KIND: EvaluateRequested})

    async def Submit(
        self, request: jobs_pb2.SubmitJobRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.JobStatus:
        if request.kind == JOB_KIND:
            try:
                spec = json.loads(request.spec_json or "{}")
                tasks = spec.get("tasks") if isinstance(spec, dict) else None
                if isinstance(tasks, list):
                    resolve_tasks([str(t) for t in tasks])
            except UnknownTask as exc:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"invalid evaluate job spec: {exc}")
            except ValueError:
                pass  # malformed JSON: the shared servicer reports it
        return await super().Submit(request, context)


def add_jobs_api(runtime: ServiceRuntime) -> EvaluatorJobsServicer:
    servicer = EvaluatorJobsServicer(runtime.bus)
    runtime.add_grpc(jobs_pb2_grpc.add_JobsServicer_to_server, servicer, "puyu.jobs.v1.Jobs")
    return servicer
