"""``puyu serve MODEL_PATH``: one Hugging Face model folder over the OpenAI API, no bus (as ``vllm serve``)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from pathlib import Path

import torch
import uvicorn
from fastapi import FastAPI
from prometheus_client import make_asgi_app
from pydantic import ValidationError

from services.inference_gateway.app import engine_loader, limits_from
from services.inference_gateway.config import GatewaySettings
from services.inference_gateway.core.kv_cache import resolve_kv_cache_dtype
from services.inference_gateway.core.limits import Limits
from services.inference_gateway.core.pool import ModelPool
from services.inference_gateway.core.routing import RoutingPolicy
from services.inference_gateway.core.sampling import InvalidRequest
from services.inference_gateway.metrics import watch_pool
from services.inference_gateway.openai.routes import install_openai_api
from services.inference_gateway.router import Router
from shared.auth import Authenticator
from shared.auth.http import install_auth

log = logging.getLogger(__name__)

# Where neither PUYU_GATEWAY_* nor a flag says: one model on its own machine takes a larger batch and
# longer answers than the service's engines (which share a host with other versions and workers).
SERVE_DEFAULTS: dict[str, object] = {"gateway_max_batch_size": 32, "gateway_default_max_tokens": 256}


def serve_settings(**flags: object) -> GatewaySettings:
    """``puyu serve``'s settings: ``PUYU_GATEWAY_*`` from the environment (the engine's batch size,
    KV blocks or memory, KV dtype, step tokens, prefix caching, KV layout, dtype, threads, limits), the flags given
    (not None) over them, ``SERVE_DEFAULTS`` where neither says."""
    from_env = GatewaySettings().model_fields_set
    defaults = {key: value for key, value in SERVE_DEFAULTS.items() if key not in from_env}
    given = {key: value for key, value in flags.items() if value is not None}
    return GatewaySettings(**{**defaults, **given})  # type: ignore[arg-type]  # validated by pydantic


def build_serve_app(
    model_path: Path,
    *,
    settings: GatewaySettings | None = None,
    served_name: str | None = None,
    api_key: str | None = None,
    default_max_tokens: int | None = None,
    limits: Limits | None = None,
    max_batch_size: int | None = None,
) -> tuple[FastAPI, ModelPool]:
    """The standalone app: the model loads and warms at start-up; the same routes as the service.

    The engine is built from ``settings`` (default: ``serve_settings``); ``default_max_tokens``,
    ``max_batch_size`` and ``api_key`` override it as flags do; ``limits`` replaces the settings' ones.
    """
    settings = settings or serve_settings(
        gateway_default_max_tokens=default_max_tokens, gateway_max_batch_size=max_batch_size
    )
    if settings.gateway_num_threads:
        torch.set_num_threads(settings.gateway_num_threads)
    pool = ModelPool(engine_loader(settings))
    watch_pool(pool)
    name = served_name or Path(model_path).resolve().name

    async def load() -> None:
        await pool.deploy(name, 1, Path(model_path))
        log.info("serving %s from %s", name, model_path)

    async def unload() -> None:
        await pool.close()

    app = FastAPI(title="puyu serve", on_startup=[load], on_shutdown=[unload])
    # As ``vllm serve``: open on its own machine until an API key (or a tokens file) is given.
    install_auth(app, Authenticator(settings.auth_tokens_file, required=False))
    app.mount("/metrics", make_asgi_app())

    @app.get("/health")
    async def health() -> dict[str, object]:
        return {"status": "ok", "models": pool.served_names()}

    limits = limits or limits_from(settings)
    if api_key and api_key not in limits.api_keys:
        limits = dataclasses.replace(limits, api_keys=(*limits.api_keys, api_key))
    router = Router(pool, policy=RoutingPolicy(max_queue=limits.max_queue))
    install_openai_api(app, router, limits, default_max_tokens=settings.gateway_default_max_tokens)
    return app, pool


def serve_cmd(
    model_path: Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    served_name: str | None = None,
    *,
    dtype: str | None = None,
    max_batch_size: int | None = None,
    rate_limit_rpm: float | None = None,
    max_queue: int | None = None,
    request_timeout: float | None = None,
    default_max_tokens: int | None = None,
    kv_cache_dtype: str | None = None,
    kv_cache_memory: str | int | None = None,
) -> None:
    """Serve the folder until interrupted; a flag left None takes ``PUYU_GATEWAY_*`` or serve's default."""
    if not (Path(model_path) / "config.json").exists():
        raise SystemExit(f"{model_path}: not a Hugging Face model folder (no config.json)")
    try:
        settings = serve_settings(
            gateway_dtype=dtype,
            gateway_max_batch_size=max_batch_size,
            gateway_rate_limit_rpm=rate_limit_rpm,
            gateway_max_queue=max_queue,
            gateway_request_timeout=request_timeout,
            gateway_default_max_tokens=default_max_tokens,
            gateway_kv_cache_dtype=kv_cache_dtype,
            gateway_kv_cache_memory=kv_cache_memory,
        )
        resolve_kv_cache_dtype(settings.gateway_kv_cache_dtype, torch.float32)  # fp8 needs torch's float8
    except (ValidationError, InvalidRequest) as exc:  # a bad flag or PUYU_GATEWAY_* value, before loading
        raise SystemExit(f"puyu serve: {exc}") from None
    app, _ = build_serve_app(Path(model_path), settings=settings, served_name=served_name, api_key=api_key)
    asyncio.run(uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="info")).serve())
