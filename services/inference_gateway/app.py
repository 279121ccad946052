"""Wiring: engine pool + OpenAI HTTP API + gRPC Inference + the model.promoted handler on a ServiceRuntime."""

from __future__ import annotations

import torch

from contracts.proto.puyu.inference.v1 import inference_pb2_grpc
from services.inference_gateway.config import GatewaySettings
from services.inference_gateway.grpc_api import SERVICE_NAME, InferenceServicer
from services.inference_gateway.handlers import register_handlers
from services.inference_gateway.openai_api import install_openai_api
from services.inference_gateway.pool import ModelPool
from shared.artifacts import ArtifactStore
from shared.service import ServiceRuntime


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
    pool = pool or ModelPool(drain_timeout=settings.gateway_drain_timeout)
    install_openai_api(
        runtime.http,
        pool,
        api_key=settings.gateway_api_key,
        default_max_tokens=settings.gateway_default_max_tokens,
    )
    runtime.add_grpc(
        inference_pb2_grpc.add_InferenceServicer_to_server,
        InferenceServicer(pool, settings.gateway_default_max_tokens),
        SERVICE_NAME,
    )
    register_handlers(runtime.bus, pool, ArtifactStore(settings.artifact_root_uri), settings.gateway_instance)
    runtime.on_stop(pool.close)
    runtime.pool = pool  # type: ignore[attr-defined]  # for tests and the CLI
    return runtime
