"""Wiring: the finetuner core, its bus handler and the gRPC Jobs servicer on a ServiceRuntime."""

from __future__ import annotations

from services.finetuner.config import FinetunerSettings
from services.finetuner.core import Finetuner
from services.finetuner.grpc_api import add_finetune_jobs_api
from services.finetuner.handlers import register_handlers
from shared.artifacts import ArtifactStore
from shared.read_roots import ReadRoots
from shared.service import Service, ServiceRuntime


def create_service(settings: FinetunerSettings | None = None) -> Service[Finetuner]:
    settings = settings or FinetunerSettings()
    runtime = ServiceRuntime("finetuner", settings)
    core = Finetuner(
        ArtifactStore(settings.artifact_root_uri),
        settings.finetuner_device,
        settings.finetuner_num_threads,
        ReadRoots.from_settings(settings),
    )
    register_handlers(runtime.bus, core, settings)
    add_finetune_jobs_api(runtime)
    return Service(runtime, core)
