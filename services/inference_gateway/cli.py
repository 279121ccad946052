"""``puyu serve MODEL_PATH``: one Hugging Face model folder over the OpenAI API, no bus (as ``vllm serve``)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from pathlib import Path

import uvicorn
from fastapi import FastAPI
from prometheus_client import make_asgi_app

from services.inference_gateway.core.engine import Engine
from services.inference_gateway.core.limits import Limits
from services.inference_gateway.core.pool import ModelPool
from services.inference_gateway.core.routing import RoutingPolicy
from services.inference_gateway.metrics import watch_pool
from services.inference_gateway.openai.routes import install_openai_api
from services.inference_gateway.router import Router

log = logging.getLogger(__name__)


def build_serve_app(
    model_path: Path,
    *,
    served_name: str | None = None,
    api_key: str | None = None,
    default_max_tokens: int = 16,
    limits: Limits | None = None,
    max_batch_size: int = 32,
) -> tuple[FastAPI, ModelPool]:
    """The standalone app: the model loads and warms at start-up; the same routes as the service."""
    pool = ModelPool(lambda path, name: Engine.load(path, name=name, max_batch_size=max_batch_size))
    watch_pool(pool)
    name = served_name or Path(model_path).resolve().name

    async def load() -> None:
        await pool.deploy(name, 1, Path(model_path))
        log.info("serving %s from %s", name, model_path)

    async def unload() -> None:
        await pool.close()

    app = FastAPI(title="puyu serve", on_startup=[load], on_shutdown=[unload])
    app.mount("/metrics", make_asgi_app())

    @app.get("/health")
    async def health() -> dict[str, object]:
        return {"status": "ok", "models": pool.served_names()}

    limits = limits or Limits()
    if api_key and api_key not in limits.api_keys:
        limits = dataclasses.replace(limits, api_keys=(*limits.api_keys, api_key))
    router = Router(pool, policy=RoutingPolicy(max_queue=limits.max_queue))
    install_openai_api(app, router, limits, default_max_tokens=default_max_tokens)
    return app, pool


def serve_cmd(
    model_path: Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    served_name: str | None = None,
    *,
    max_batch_size: int = 32,
    rate_limit_rpm: float = 0,
    max_queue: int = 0,
    request_timeout: float = 0,
    default_max_tokens: int = 256,
) -> None:
    if not (Path(model_path) / "config.json").exists():
        raise SystemExit(f"{model_path}: not a Hugging Face model folder (no config.json)")
    limits = Limits(
        requests_per_minute=rate_limit_rpm, max_queue=max_queue, request_timeout_s=request_timeout
    )
    app, _ = build_serve_app(
        Path(model_path),
        served_name=served_name,
        api_key=api_key,
        limits=limits,
        max_batch_size=max_batch_size,
        default_max_tokens=default_max_tokens,
    )
    asyncio.run(uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="info")).serve())
