"""Corpus ingest: the job request and the fact that a dataset was ingested."""

from __future__ import annotations

from pydantic import Field

from contracts.events.common import DatasetRef, StrictModel
from contracts.events.envelope import EventPayload, register
from contracts.events.specs import IngestOptions, PipelineSpec


@register
class IngestRequested(EventPayload):
    event_type = "ingest.requested"
    kind = "job"
    job_id: str
    dataset_name: str = Field(pattern=r"^[a-zA-Z0-9][a-zA-Z0-9._-]{0,63}$")
    sources: list[str] = Field(min_length=1, description="Paths, globs or URIs of jsonl/txt/html files.")
    options: IngestOptions = Field(default_factory=IngestOptions)
    pipeline: PipelineSpec | None = None


class StageStats(StrictModel):
    stage: str
    docs_in: int
    docs_out: int

    @property
    def retention(self) -> float:
        return self.docs_out / self.docs_in if self.docs_in else 0.0


@register
class CorpusIngested(EventPayload):
    event_type = "corpus.ingested"
    job_id: str
    dataset: DatasetRef
    documents: int
    stages: list[StageStats]
    pipeline: PipelineSpec | None = None


__all__ = ["IngestRequested", "StageStats", "CorpusIngested"]
