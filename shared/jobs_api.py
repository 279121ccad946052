"""The gRPC Jobs service (``puyu.jobs.v1.Jobs``) every job-running service exposes.

Submit (an operator's) validates the request against its payload model, records it as queued on the job board and
publishes it onto the bus; Get reads the board; Watch streams the board's updates until the job ends.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from pydantic import ValidationError

from contracts.events import EventPayload
from contracts.proto.puyu.jobs.v1 import jobs_pb2, jobs_pb2_grpc
from shared.auth import Role
from shared.auth.grpc import rpc_role
from shared.bus import Bus, JobStatus
from shared.service import ServiceRuntime


def to_proto(status: JobStatus) -> jobs_pb2.JobStatus:
    return jobs_pb2.JobStatus(
        job_id=status.job_id,
        kind=status.kind,
        state=status.state,
        stage=status.stage,
        fraction=status.fraction,
        message=status.message,
        result_json=json.dumps(status.result),
        correlation_id=status.correlation_id or "",
    )


# A service's own check of a parsed request, beyond its schema (e.g. task names, supported methods);
# it raises ValueError with a message that names the problem.
Check = Callable[[Any], None]


class JobsServicer(jobs_pb2_grpc.JobsServicer):
    def __init__(
        self, bus: Bus, kinds: dict[str, type[EventPayload]], checks: dict[str, Check] | None = None
    ) -> None:
        self.bus = bus
        self.kinds = kinds
        self.checks = checks or {}

    @rpc_role(Role.OPERATOR)
    async def Submit(
        self, request: jobs_pb2.SubmitJobRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.JobStatus:
        if request.kind not in self.kinds:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"unknown job kind {request.kind!r}; this service runs {sorted(self.kinds)}",
            )
        cls = self.kinds[request.kind]
        try:
            spec = json.loads(request.spec_json or "{}")
            if not isinstance(spec, dict):
                raise ValueError("spec_json must be a JSON object")
            if not spec.get("job_id"):
                spec["job_id"] = f"{request.kind}-{uuid.uuid4().hex[:12]}"
            payload = cls.model_validate(spec)
            if check := self.checks.get(request.kind):
                check(payload)
        except (ValueError, ValidationError) as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"invalid {request.kind} job spec: {exc}")
        job_id = str(getattr(payload, "job_id"))  # noqa: B009 - every job payload has one; EventPayload does not
        correlation = request.correlation_id or uuid.uuid4().hex
        status = await self.bus.jobs.update(job_id, request.kind, state="queued", correlation_id=correlation)
        await self.bus.publish(payload, correlation=correlation, event_id=f"job:{request.kind}:{job_id}")
        return to_proto(status)

    @rpc_role(Role.READER)
    async def Get(
        self, request: jobs_pb2.GetJobRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.JobStatus:
        return to_proto(await self._get(request.job_id, context))

    async def _get(self, job_id: str, context: grpc.aio.ServicerContext) -> JobStatus:
        status = await self.bus.jobs.get(job_id)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no job {job_id!r}")
            raise AssertionError
        return status

    @rpc_role(Role.READER)
    async def Watch(  # type: ignore[override]
        self, request: jobs_pb2.GetJobRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[jobs_pb2.JobStatus]:
        await self._get(request.job_id, context)  # NOT_FOUND for an unknown job
        async for status in self.bus.jobs.watch(request.job_id):
            yield to_proto(status)


def add_jobs_api(
    runtime: ServiceRuntime, kinds: dict[str, type[EventPayload]], checks: dict[str, Check] | None = None
) -> JobsServicer:
    servicer = JobsServicer(runtime.bus, kinds, checks)
    runtime.add_grpc(jobs_pb2_grpc.add_JobsServicer_to_server, servicer, "puyu.jobs.v1.Jobs")
    return servicer
