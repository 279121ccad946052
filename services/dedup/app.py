"""Wire the dedup core and adapters onto a ServiceRuntime."""

from __future__ import annotations

from contracts.events import DedupRequested
from services.dedup.config import DedupSettings
from services.dedup.handlers import register_handlers
from shared.jobs_api import add_jobs_api
from shared.service import ServiceRuntime


def create_service(settings: DedupSettings | None = None) -> ServiceRuntime:
    settings = settings or DedupSettings()
    runtime = ServiceRuntime("dedup", settings)
    register_handlers(runtime.bus, settings)
    add_jobs_api(runtime, {"dedup": DedupRequested})
    return runtime
