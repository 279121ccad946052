"""Wiring: the finetuner core (a controller over the configured launcher), its bus handler and the gRPC
Jobs servicer on a ServiceRuntime."""

from __future__ import annotations

from services.finetuner.config import FinetunerSettings
from services.finetuner.core import Finetuner
from services.finetuner.grpc_api import add_finetune_jobs_api
from services.finetuner.handlers import register_handlers
from shared.artifacts import ArtifactStore
from shared.launch import UnavailableLauncher
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
        # A launcher that cannot be built (unknown name, missing settings) refuses each job with why.
        UnavailableLauncher.from_settings(settings),
        nprocs_per_node=settings.launch_nprocs_per_node,
        nnodes=settings.launch_nnodes,
        gpus_per_node=settings.launch_gpus_per_node,
        runs_dir=settings.launch_runs_dir,
        poll_seconds=settings.launch_poll_seconds,
    )
    register_handlers(runtime.bus, core, settings)
    add_finetune_jobs_api(runtime)

    # A stop begins: a run on this node (local, torchrun) stops at its next step while the bus is
    # still up, saves its state and fails this attempt; the redelivered job resumes it. A cluster
    # run goes on; the redelivered job re-attaches to it.
    async def stop_runs() -> None:
        core.stop_all()

    runtime.on_draining(stop_runs)
    return Service(runtime, core)
