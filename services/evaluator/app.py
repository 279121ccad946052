"""Wires the evaluator's core and adapters onto a ServiceRuntime."""

from __future__ import annotations

from services.evaluator.config import EvaluatorSettings
from services.evaluator.core import Evaluator
from services.evaluator.grpc_api import add_jobs_api
from services.evaluator.handlers import register_handlers
from shared.artifacts import ArtifactStore
from shared.service import Service, ServiceRuntime


def create_service(settings: EvaluatorSettings | None = None) -> Service[Evaluator]:
    settings = settings or EvaluatorSettings()
    runtime = ServiceRuntime("evaluator", settings)
    core = Evaluator(settings, ArtifactStore(settings.artifact_root_uri))
    register_handlers(runtime.bus, core, settings)
    add_jobs_api(runtime, core)
    return Service(runtime, core)
