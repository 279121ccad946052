"""The gRPC Jobs service shared by the job-running services, against a real nats-server."""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest

from contracts.events import IngestRequested
from contracts.proto.puyu.jobs.v1 import jobs_pb2, jobs_pb2_grpc
from shared.bus import HandlerContext
from shared.jobs_api import add_jobs_api
from shared.natsserver import free_port
from shared.service import ServiceRuntime
from shared.settings import CommonSettings

pytestmark = pytest.mark.integration


async def test_submit_get_watch(nats_url: str) -> None:
    settings = CommonSettings(nats_url=nats_url)
    runtime = ServiceRuntime(
        "corpus_ingest", settings, grpc_port_override=free_port(), http_port_override=free_port()
    )
    add_jobs_api(runtime, {"ingest": IngestRequested})
    received: list[IngestRequested] = []

    @runtime.bus.handle(IngestRequested)
    async def handler(ctx: HandlerContext[IngestRequested]) -> None:
        received.append(ctx.payload)
        await ctx.bus.jobs.update(ctx.payload.job_id, "ingest", state="running", fraction=0.5)
        await asyncio.sleep(0.3)
        await ctx.bus.jobs.update(ctx.payload.job_id, "ingest", state="succeeded", fraction=1.0)

    task = asyncio.create_task(runtime.run())
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{runtime.grpc_port}") as channel:
            await channel.channel_ready()
            stub = jobs_pb2_grpc.JobsStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Submit(jobs_pb2.SubmitJobRequest(kind="train", spec_json="{}"))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "unknown job kind" in str(
                err.value.details()
            )
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Submit(jobs_pb2.SubmitJobRequest(kind="ingest", spec_json='{"dataset_name": "x"}'))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "sources" in str(
                err.value.details()
            )

            spec = {"dataset_name": "web", "sources": ["/tmp/x.jsonl"]}
            status = await stub.Submit(jobs_pb2.SubmitJobRequest(kind="ingest", spec_json=json.dumps(spec)))
            assert status.state == "queued" and status.job_id.startswith("ingest-")
            states = [s.state async for s in stub.Watch(jobs_pb2.GetJobRequest(job_id=status.job_id))]
            assert states[-1] == "succeeded" and "running" in states
            got = await stub.Get(jobs_pb2.GetJobRequest(job_id=status.job_id))
            assert got.fraction == 1.0
            assert [r.job_id for r in received] == [status.job_id]
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Get(jobs_pb2.GetJobRequest(job_id="nope"))
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        runtime.stop()
        await asyncio.wait_for(task, 30)
