"""The service's core: an ingest request → a dataset in the artifact store."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from contracts.events import DatasetRef, IngestOptions
from services.corpus_ingest.core.langid import DEFAULT_DETECTOR_LANGUAGES
from services.corpus_ingest.core.pipeline import MANIFEST, Progress, run_ingest
from services.corpus_ingest.core.readers import ReadLimits, expand_sources
from shared.artifacts import ArtifactStore
from shared.read_roots import ReadRoots


@dataclass(frozen=True)
class IngestedDataset:
    dataset: DatasetRef
    manifest: dict[str, Any]


class Ingestor:
    """``run_ingest`` with the service's configuration, writing into the artifact store and reading
    only under ``read_roots`` (default: the artifact store alone)."""

    def __init__(
        self,
        store: ArtifactStore,
        detector_languages: tuple[str, ...] | list[str] = DEFAULT_DETECTOR_LANGUAGES,
        limits: ReadLimits = ReadLimits(),
        workers: int = 1,
        read_roots: ReadRoots | None = None,
    ) -> None:
        self.store = store
        self.read_roots = read_roots or ReadRoots([store.root_uri])
        self.detector_languages = tuple(detector_languages)
        self.limits = limits
        self.workers = workers

    @staticmethod
    def dataset_id(dataset_name: str, job_id: str) -> str:
        # Derived from the job: a redelivered or rerun request overwrites the same dataset folder.
        return f"{dataset_name}-{job_id[:8]}"

    def check_sources(self, sources: list[str]) -> None:
        """Refuse a source outside the read roots, and a file a source reaches through a link out of them."""
        self.read_roots.require_all(sources)
        files, _ = expand_sources(sources)
        self.read_roots.require_all(files, "file")

    def ingest(
        self,
        dataset_id: str,
        sources: list[str],
        options: IngestOptions | None = None,
        progress: Progress | None = None,
    ) -> IngestedDataset:
        """Ingest ``sources`` into ``datasets/<dataset_id>`` of the store (blocking)."""
        self.check_sources(sources)
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
