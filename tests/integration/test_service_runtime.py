"""Every service process exposes gRPC health and reflection, and HTTP /health and /metrics."""

from __future__ import annotations

import asyncio

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from contracts.events import IngestRequested
from shared.jobs_api import add_jobs_api
from shared.natsserver import free_port
from shared.service import ServiceRuntime
from shared.settings import CommonSettings

pytestmark = pytest.mark.integration


async def test_health_reflection_and_metrics(nats_url: str) -> None:
    runtime = ServiceRuntime(
        "corpus_ingest",
        CommonSettings(nats_url=nats_url),
        grpc_port_override=free_port(),
        http_port_override=free_port(),
    )
    add_jobs_api(runtime, {"ingest": IngestRequested})
    task = asyncio.create_task(runtime.run())
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{runtime.grpc_port}") as channel:
            await asyncio.wait_for(channel.channel_ready(), 30)
            health = health_pb2_grpc.HealthStub(channel)
            for service in ("", "puyu.jobs.v1.Jobs"):
                reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
                assert reply.status == health_pb2.HealthCheckResponse.SERVING

            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            request = reflection_pb2.ServerReflectionRequest(list_services="")
            names = set()
            async for response in stub.ServerReflectionInfo(iter([request])):
                names |= {s.name for s in response.list_services_response.service}
            assert {"puyu.jobs.v1.Jobs", "grpc.health.v1.Health"} <= names

        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{runtime.http_port}") as http:
            for _ in range(50):  # uvicorn starts a moment after the gRPC server
                try:
                    resp = await http.get("/health")
                    break
                except httpx.ConnectError:
                    await asyncio.sleep(0.1)
            assert resp.status_code == 200 and resp.json()["bus"] == "connected"
            metrics = await http.get("/metrics/")
            assert metrics.status_code == 200 and "puyu_events_published_total" in metrics.text
    finally:
        runtime.stop()
        await asyncio.wait_for(task, 30)
