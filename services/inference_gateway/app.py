"""Wiring: engine pool + OpenAI HTTP API + gRPC Inference + the model.promoted handler on a ServiceRuntime."""

from __future__ import annotations

import asyncio
from pathlib import Path

import torch

from contracts.proto.puyu.inference.v1 import inference_pb2_grpc
from services.inference_gateway.admission import Limits
from services.inference_gateway.announce import Announcer
from services.inference_gateway.champions import restore_champions
from services.inference_gateway.config import GatewaySettings
from services.inference_gateway.engine import Engine
from services.inference_gateway.grpc_api import SERVICE_NAME, InferenceServicer
from services.inference_gateway.handlers import register_handlers
from services.inference_gateway.openai_api import install_openai_api
from services.inference_gateway.pool import EngineLoader, ModelPool
from shared.artifacts import ArtifactStore
from shared.ports import registry_grpc_target
from shared.service import ServiceRuntime


def engine_loader(settings: GatewaySettings) -> EngineLoader:
    kw = settings.engine_kwargs()
    return lambda path, name: Engine.load(Path(path), name=name, **kw)  # type: ignore[arg-type]


def limits_from(settings: GatewaySettings) -> Limits:
    return Limits(
        api_keys=settings.keys(),
        requests_per_minute=settings.gateway_rate_limit_rpm,
        max_queue=settings.gateway_max_queue,
        request_timeout_s=settings.gateway_request_timeout,
    )


def create_service(settings: GatewaySettings | None = None, pool: ModelPool | None = None) -> ServiceRuntime:
    settings = settings or GatewaySettings()
    if settings.gateway_num_threads:
        torch.set_num_threads(settings.gateway_num_threads)
    runtime = ServiceRuntime(
        "inference_gateway",
        settings,
        grpc_port_override=settings.gateway_grpc_port,
        http_port_override=settings.gateway_http_port,
    )
    pool = pool or ModelPool(engine_loader(settings), drain_timeout=settings.gateway_drain_timeout)
    install_openai_api(
        runtime.http,
        pool,
        default_max_tokens=settings.gateway_default_max_tokens,
        limits=limits_from(settings),
    )
    runtime.add_grpc(
        inference_pb2_grpc.add_InferenceServicer_to_server,
        InferenceServicer(pool, settings.gateway_default_max_tokens),
        SERVICE_NAME,
    )
    register_handlers(runtime.bus, pool, ArtifactStore(settings.artifact_root_uri), settings.gateway_instance)
    host = settings.host if settings.host not in ("0.0.0.0", "::") else "127.0.0.1"
    announcer = Announcer(
        runtime.bus,
        pool,
        settings.gateway_instance,
        interval=settings.gateway_announce_interval,
        http_url=f"http://{host}:{runtime.http_port}",
        grpc_target=f"{host}:{runtime.grpc_port}",
    )
    runtime.on_start(announcer.start)
    store = ArtifactStore(settings.artifact_root_uri)
    restore: list[asyncio.Task[int]] = []

    async def start_restore() -> None:  # in the background: the gateway answers while it loads
        restore.append(asyncio.create_task(restore_champions(pool, store, registry_grpc_target(settings))))

    async def stop_restore() -> None:
        for task in restore:
            task.cancel()

    runtime.on_start(start_restore)
    runtime.on_stop(stop_restore)
    runtime.on_stop(announcer.stop)
    runtime.on_stop(pool.close)
    runtime.pool = pool  # type: ignore[attr-defined]  # for tests and the CLI
    return runtime
