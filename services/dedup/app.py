"""Wire the dedup core and adapters onto a ServiceRuntime."""

from __future__ import annotations

from contracts.events import DedupRequested
from services.dedup.config import DedupSettings
from services.dedup.core import Deduplicator
from services.dedup.handlers import register_handlers
from shared.artifacts import ArtifactStore
from shared.jobs_api import add_jobs_api
from shared.service import Service, ServiceRuntime


def create_service(settings: DedupSettings | None = None) -> Service[Deduplicator]:
    settings = settings or DedupSettings()
    runtime = ServiceRuntime("dedup", settings)
    core = Deduplicator(
        ArtifactStore(settings.artifact_root_uri), settings.dedup_workers, settings.dedup_bands_per_item
    )
    register_handlers(runtime.bus, core, settings)
    add_jobs_api(runtime, {"dedup": DedupRequested})
    return Service(runtime, core)
