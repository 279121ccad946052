"""The service's core: an ingest request → a dataset in the artifact store."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from contracts.events import DatasetRef, IngestOptions
from services.corpus_ingest.core.langid import DEFAULT_DETECTOR_LANGUAGES
from services.corpus_ingest.core.pipeline import MANIFEST, Progress, run_ingest
from services.corpus_ingest.core.readers import ReadLimits
from shared.artifacts import ArtifactStore


@dataclass(frozen=True)
class IngestedDataset:
    dataset: DatasetRef
    manifest: dict[str, Any]


class Ingestor:
    """``run_ingest`` with the service's configuration, writing into the artifact store."""

    def __init__(
        self,
        store: ArtifactStore,
        detector_languages: tuple[str, ...] | list[str] = DEFAULT_DETECTOR_LANGUAGES,
        limits: ReadLimits = ReadLimits(),
        workers: int = 1,
    ) -> None:
        self.store = store
        self.detector_languages = tuple(detector_languages)
        self.limits = limits
        self.workers = workers

    @staticmethod
    def dataset_id(dataset_name: str, job_id: str) -> str:
        # Derived from the job: a redelivered or rerun request overwrites the same dataset folder.
        return f"{dataset_name}-{job_id[:8]}"

    def ingest(
        self,
        dataset_id: str,
        sources: list[str],
        options: IngestOptions | None = None,
        progress: Progress | None = None,
    ) -> IngestedDataset:
        """Ingest ``sources`` into ``datasets/<dataset_id>`` of the store (blocking)."""
        key = f"datasets/{dataset_id}"
        staging = self.store.local_staging(key)
        manifest = run_ingest(
            sources,
            staging,
            dataset_id,
            options,
            self.detector_languages,
            self.limits,
            progress,
            self.workers,
        )
        self.store.put_dir(staging, key)
        dataset = DatasetRef(
            dataset_id=dataset_id,
            manifest_uri=self.store.uri(f"{key}/{MANIFEST}"),
            digest=hashlib.sha256((staging / MANIFEST).read_bytes()).hexdigest(),
        )
        return IngestedDataset(dataset, manifest)
