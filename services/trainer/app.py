"""Wiring: the trainer core, its bus handlers and the gRPC Jobs servicer on a ServiceRuntime."""

from __future__ import annotations

from services.trainer.config import TrainerSettings
from services.trainer.core import Trainer
from services.trainer.grpc_api import add_train_jobs_api
from services.trainer.handlers import register_handlers
from shared.artifacts import ArtifactStore
from shared.launch import UnavailableLauncher
from shared.read_roots import ReadRoots
from shared.service import Service, ServiceRuntime


def create_service(settings: TrainerSettings | None = None) -> Service[Trainer]:
    settings = settings or TrainerSettings()
    runtime = ServiceRuntime("trainer", settings)
    core = Trainer(
        ArtifactStore(settings.artifact_root_uri),
        settings.trainer_device,
        ReadRoots.from_settings(settings),
        # A launcher that cannot be built (unknown name, missing settings) refuses each submit with why.
        UnavailableLauncher.from_settings(settings),
        nprocs_per_node=settings.launch_nprocs_per_node,
        nnodes=settings.launch_nnodes,
        gpus_per_node=settings.launch_gpus_per_node,
        runs_dir=settings.launch_runs_dir,
        poll_seconds=settings.launch_poll_seconds,
    )
    register_handlers(runtime.bus, core, settings)
    add_train_jobs_api(runtime, core)

    # A stop begins: a run on this node (local, torchrun) stops at its next step while the bus is
    # still up, saves its state and fails this attempt; the redelivered job resumes it on this or
    # another replica. A cluster run goes on; the redelivered job re-attaches to it.
    async def stop_runs() -> None:
        core.stop_all()

    runtime.on_draining(stop_runs)
    return Service(runtime, core)
