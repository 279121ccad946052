"""Wiring: the trainer core, its bus handlers and the gRPC Jobs servicer on a ServiceRuntime."""

from __future__ import annotations

from services.trainer.config import TrainerSettings
from services.trainer.core import Trainer
from services.trainer.grpc_api import add_train_jobs_api
from services.trainer.handlers import register_handlers
from shared.artifacts import ArtifactStore
from shared.read_roots import ReadRoots
from shared.service import Service, ServiceRuntime


def create_service(settings: TrainerSettings | None = None) -> Service[Trainer]:
    settings = settings or TrainerSettings()
    runtime = ServiceRuntime("trainer", settings)
    core = Trainer(
        ArtifactStore(settings.artifact_root_uri), settings.trainer_device, ReadRoots.from_settings(settings)
    )
    register_handlers(runtime.bus, core, settings)
    add_train_jobs_api(runtime, core)

    # A stop begins: a run in progress stops at its next step while the bus is still up, saves its
    # state and fails this attempt; the redelivered job resumes it on this or another replica.
    async def stop_runs() -> None:
        core.stop_all()

    runtime.on_draining(stop_runs)
    return Service(runtime, core)
