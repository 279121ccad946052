"""Wiring: trainer core + bus handlers + gRPC Jobs servicer on a ServiceRuntime."""

from __future__ import annotations

from services.trainer.config import TrainerSettings
from services.trainer.grpc_api import add_train_jobs_api
from services.trainer.handlers import TrainHandlers
from shared.artifacts import ArtifactStore
from shared.service import ServiceRuntime


def create_service(settings: TrainerSettings | None = None) -> ServiceRuntime:
    settings = settings or TrainerSettings()
    runtime = ServiceRuntime("trainer", settings)
    store = ArtifactStore(settings.artifact_root_uri)
    handlers = TrainHandlers(runtime.bus, store, settings)
    handlers.register()
    add_train_jobs_api(runtime)

    # Stop a run in progress before the bus drains (on_stop hooks run after it): the run saves its
    # state and fails this attempt; the redelivered job resumes it on this or another replica.
    stop = runtime.stop

    def stop_training_then_runtime() -> None:
        handlers.stop_all()
        stop()

    runtime.stop = stop_training_then_runtime  # type: ignore[method-assign]

    return runtime
