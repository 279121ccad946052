"""Wiring of the two roles of this service on a ServiceRuntime.

- gateway (``python -m services.inference_gateway``): the OpenAI HTTP API and gRPC Inference; each
  request goes to the least-loaded worker process announced in ``puyu_workers`` serving its model,
  else to the gateway's own engine pool (which follows ``model.promoted`` like a worker).
- worker (``python -m services.inference_gateway worker``): an engine pool behind gRPC Inference
  (and the OpenAI API, for direct use); it deploys every promotion (its own durable consumer),
  restores the registry's champions at start-up and announces what it serves and its load.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path

import torch

from contracts.proto.puyu.inference.v1 import inference_pb2_grpc
from services.inference_gateway.announce import Announcer
from services.inference_gateway.champions import restore_champions
from services.inference_gateway.config import GatewaySettings
from services.inference_gateway.core.engine import Engine
from services.inference_gateway.core.limits import Limits
from services.inference_gateway.core.pool import EngineLoader, ModelPool
from services.inference_gateway.core.routing import RoutingPolicy
from services.inference_gateway.core.vllm_engine import vllm_installed
from services.inference_gateway.core.worker_table import WorkerTable
from services.inference_gateway.gateway import Gateway
from services.inference_gateway.grpc_api import SERVICE_NAME, InferenceServicer
from services.inference_gateway.handlers import register_handlers
from services.inference_gateway.metrics import watch_pool
from services.inference_gateway.openai.routes import install_openai_api
from services.inference_gateway.remote import WorkerClients
from services.inference_gateway.router import Router
from services.inference_gateway.workers import WorkerWatch
from shared.artifacts import ArtifactStore
from shared.auth import ClientAuth
from shared.natsserver import free_port
from shared.ports import registry_grpc_target
from shared.service import Service, ServiceRuntime

log = logging.getLogger(__name__)


def engine_loader(settings: GatewaySettings) -> EngineLoader:
    """How the pool opens a model folder: puyu's engine, or vLLM's (PUYU_WORKER_ENGINE=vllm)."""
    kw = settings.engine_kwargs()
    if settings.worker_engine == "vllm":
        if not vllm_installed():
            raise SystemExit(
                "PUYU_WORKER_ENGINE=vllm, but vLLM is not installed in this Python "
                f"({sys.executable}): `make vllm-worker-env`, then run the worker with "
                "`.venv-vllm/bin/python -m services.inference_gateway worker`"
            )
        from services.inference_gateway.core.vllm_engine.engine import VllmEngine  # imports vLLM

        if settings.gateway_num_threads:  # vLLM's engine processes take their threads from the environment
            os.environ.setdefault("OMP_NUM_THREADS", str(settings.gateway_num_threads))

        return lambda path, name: VllmEngine.load(Path(path), name=name, **kw)  # type: ignore[arg-type]
    return lambda path, name: Engine.load(Path(path), name=name, **kw)  # type: ignore[arg-type]


def limits_from(settings: GatewaySettings) -> Limits:
    return Limits(
        api_keys=settings.keys(),
        requests_per_minute=settings.gateway_rate_limit_rpm,
        max_queue=settings.gateway_max_queue,
        request_timeout_s=settings.gateway_request_timeout,
    )


def create_service(
    settings: GatewaySettings | None = None, pool: ModelPool | None = None
) -> Service[Gateway]:
    """``pool``: engines to serve instead of a new pool (a worker or a gateway with local models has one)."""
    settings = settings or GatewaySettings()
    if settings.gateway_num_threads:
        torch.set_num_threads(settings.gateway_num_threads)
    worker = settings.gateway_role == "worker"
    runtime = _runtime(settings, worker)
    instance = settings.instance(runtime.grpc_port)
    if pool is None and (worker or settings.gateway_local_models):
        pool = ModelPool(engine_loader(settings), drain_timeout=settings.gateway_drain_timeout)
    if pool is not None:
        watch_pool(pool)
    workers = None
    if not worker and settings.gateway_route_workers:
        workers = WorkerTable(own_instance=instance, ttl=settings.gateway_worker_ttl)
        watch = WorkerWatch(runtime.bus, workers)
        runtime.on_start(watch.start)
        runtime.on_stop(watch.stop)
    policy = RoutingPolicy(attempts=settings.gateway_worker_attempts, max_queue=settings.gateway_max_queue)
    clients = WorkerClients(ClientAuth.from_settings(settings))
    router = Router(pool, workers, instance=instance, policy=policy, clients=clients)
    runtime.on_stop(router.close)
    gateway = Gateway(instance=instance, router=router, limits=limits_from(settings), pool=pool)

    install_openai_api(
        runtime.http, router, gateway.limits, default_max_tokens=settings.gateway_default_max_tokens
    )
    runtime.add_grpc(
        inference_pb2_grpc.add_InferenceServicer_to_server,
        InferenceServicer(router, settings.gateway_default_max_tokens),
        SERVICE_NAME,
    )
    register_handlers(runtime.bus, gateway, settings)
    if pool is not None:
        _serve_pool(runtime, settings, pool, instance)
    return Service(runtime, gateway)


def _runtime(settings: GatewaySettings, worker: bool) -> ServiceRuntime:
    if worker:  # workers are many per host: their ports are given, or free ones are taken
        return ServiceRuntime(
            "inference_worker",
            settings,
            grpc_port_override=settings.gateway_grpc_port or free_port(),
            http_port_override=settings.gateway_http_port or free_port(),
        )
    return ServiceRuntime(
        "inference_gateway",
        settings,
        grpc_port_override=settings.gateway_grpc_port,
        http_port_override=settings.gateway_http_port,
    )


def _serve_pool(runtime: ServiceRuntime, settings: GatewaySettings, pool: ModelPool, instance: str) -> None:
    """Restore the champions at start-up, announce what is served and the load, drain at stop."""
    announcer = Announcer(  # the addresses a gateway in another container or pod can dial
        runtime.bus,
        pool,
        instance,
        interval=settings.gateway_announce_interval,
        http_url=f"http://{settings.advertised_address(runtime.http_port)}",
        grpc_target=settings.advertised_address(runtime.grpc_port),
    )
    runtime.on_start(announcer.start)
    restore: list[asyncio.Task[int]] = []
    store = ArtifactStore(settings.artifact_root_uri)

    async def start_restore() -> None:  # in the background: the process answers while it loads
        restoring = restore_champions(
            pool, store, registry_grpc_target(settings), auth=ClientAuth.from_settings(settings)
        )
        restore.append(asyncio.create_task(restoring))

    async def stop_restore() -> None:
        for task in restore:
            task.cancel()

    runtime.on_start(start_restore)
    runtime.on_stop(stop_restore)
    # While the bus is up (it stops the announcing loop, then deletes the entry): routers stop sending
    # new requests here at once.
    runtime.on_draining(announcer.withdraw)

    async def drain() -> None:
        # new requests now fail fast (a gateway moves them to another worker); the ones running finish
        if not await pool.drain(settings.gateway_stop_drain_timeout):
            log.warning(
                "stopping with requests still running after %.0fs", settings.gateway_stop_drain_timeout
            )

    runtime.on_stop(drain)
    runtime.on_stop(pool.close)
