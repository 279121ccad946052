"""Settings of the corpus-ingest service (``PUYU_*`` environment variables)."""

from __future__ import annotations

from pydantic import Field

from services.corpus_ingest.core.langid import DEFAULT_DETECTOR_LANGUAGES
from services.corpus_ingest.core.readers import ReadLimits
from shared.settings import CommonSettings


class IngestSettings(CommonSettings):
    corpus_ingest_detector_languages: list[str] = Field(
        default_factory=lambda: list(DEFAULT_DETECTOR_LANGUAGES),
        description="Languages the lingua detector chooses between (the request's allow-list is added).",
    )
    corpus_ingest_txt_max_doc_bytes: int = Field(
        default=ReadLimits.txt_doc_bytes,
        ge=1024,
        description="A .txt file above this is split at blank lines into documents.",
    )
    corpus_ingest_max_doc_bytes: int = Field(
        default=ReadLimits.doc_bytes,
        ge=1024,
        description="One document (JSONL line, HTML page, WARC record, .txt paragraph) above this, "
        "decompressed, is skipped and counted as a file error.",
    )
    corpus_ingest_max_file_bytes: int = Field(
        default=ReadLimits.file_bytes,
        ge=1024,
        description="A file is read up to this many bytes, decompressed; past it reading stops "
        "(a file error; the documents before it are kept).",
    )
    corpus_ingest_max_job_bytes: int = Field(
        default=ReadLimits.job_bytes,
        ge=1,
        description="A job whose sources hold more bytes on disk is refused.",
    )
    corpus_ingest_workers: int = Field(
        default=1, ge=1, le=64, description="Processes extracting HTML (1: in the handler's thread)."
    )

    def read_limits(self) -> ReadLimits:
        return ReadLimits(
            doc_bytes=self.corpus_ingest_max_doc_bytes,
            file_bytes=self.corpus_ingest_max_file_bytes,
            job_bytes=self.corpus_ingest_max_job_bytes,
            txt_doc_bytes=self.corpus_ingest_txt_max_doc_bytes,
        )
