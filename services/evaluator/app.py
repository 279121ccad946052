"""Wires the evaluator's core and adapters onto a ServiceRuntime."""

from __future__ import annotations

from services.evaluator.config import EvaluatorSettings
from services.evaluator.grpc_api import add_jobs_api
from services.evaluator.handlers import EvaluationRunner, register_handlers
from shared.artifacts import ArtifactStore
from shared.service import ServiceRuntime


def create_service(settings: EvaluatorSettings | None = None) -> ServiceRuntime:
    settings = settings or EvaluatorSettings()
    runtime = ServiceRuntime("evaluator", settings)
    store = ArtifactStore(settings.artifact_root_uri)
    register_handlers(runtime.bus, EvaluationRunner(settings, store))
    add_jobs_api(runtime, settings)
    return runtime
