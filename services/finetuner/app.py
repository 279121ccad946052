"""Wires the finetuner: bus handler + gRPC Jobs onto a ServiceRuntime."""

from __future__ import annotations

from services.finetuner.config import FinetunerSettings
from services.finetuner.grpc_api import add_finetune_jobs_api
from services.finetuner.handlers import register_handlers
from shared.artifacts import ArtifactStore
from shared.service import ServiceRuntime


def create_service(settings: FinetunerSettings | None = None) -> ServiceRuntime:
    settings = settings or FinetunerSettings()
    runtime = ServiceRuntime("finetuner", settings)
    store = ArtifactStore(settings.artifact_root_uri)
    register_handlers(runtime.bus, settings, store)
    add_finetune_jobs_api(runtime)

    return runtime
