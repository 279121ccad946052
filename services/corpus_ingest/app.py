"""Wire the corpus-ingest core and adapters onto a ServiceRuntime."""

from __future__ import annotations

from contracts.events import IngestRequested
from services.corpus_ingest.config import IngestSettings
from services.corpus_ingest.handlers import register_handlers
from shared.jobs_api import add_jobs_api
from shared.service import ServiceRuntime


def create_service(settings: IngestSettings | None = None) -> ServiceRuntime:
    settings = settings or IngestSettings()
    runtime = ServiceRuntime("corpus_ingest", settings)
    register_handlers(runtime.bus, settings)
    add_jobs_api(runtime, {"ingest": IngestRequested})
    return runtime
