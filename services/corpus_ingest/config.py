"""Settings of the corpus-ingest service (``PUYU_*`` environment variables)."""

from __future__ import annotations

from pydantic import Field

from services.corpus_ingest.core.langid import DEFAULT_DETECTOR_LANGUAGES
from shared.settings import CommonSettings


class IngestSettings(CommonSettings):
    corpus_ingest_detector_languages: list[str] = Field(
        default_factory=lambda: list(DEFAULT_DETECTOR_LANGUAGES),
        description="Languages the lingua detector chooses between (the request's allow-list is added).",
    )
    corpus_ingest_txt_max_doc_bytes: int = Field(
        default=1 << 20, ge=1024, description="A .txt file above this is split at blank lines into documents."
    )
    corpus_ingest_workers: int = Field(
        default=1, ge=1, le=64, description="Processes extracting HTML (1: in the handler's thread)."
    )
