"""Wire the corpus-ingest core and adapters onto a ServiceRuntime."""

from __future__ import annotations

from contracts.events import IngestRequested
from services.corpus_ingest.config import IngestSettings
from services.corpus_ingest.core import Ingestor
from services.corpus_ingest.handlers import register_handlers
from shared.artifacts import ArtifactStore
from shared.jobs_api import add_jobs_api
from shared.read_roots import ReadRoots
from shared.service import Service, ServiceRuntime


def create_service(settings: IngestSettings | None = None) -> Service[Ingestor]:
    settings = settings or IngestSettings()
    runtime = ServiceRuntime("corpus_ingest", settings)
    core = Ingestor(
        ArtifactStore(settings.artifact_root_uri),
        settings.corpus_ingest_detector_languages,
        settings.read_limits(),
        settings.corpus_ingest_workers,
        ReadRoots.from_settings(settings),
    )
    register_handlers(runtime.bus, core, settings)
    # refused at submit already: the caller hears at once which roots it may read
    add_jobs_api(runtime, {"ingest": IngestRequested}, {"ingest": lambda p: core.check_sources(p.sources)})
    return Service(runtime, core)
