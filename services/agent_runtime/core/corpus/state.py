"""Which datasets the corpus index holds, kept in the artifact store so a restarted service rebuilds it.

The bus delivers each ``corpus.deduplicated`` event once per service, so without this record a restart
would come back with an empty index.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from shared.artifacts import ArtifactStore

log = logging.getLogger(__name__)
STATE_KEY = "agent_runtime/corpus_index.json"


@dataclass(frozen=True)
class IndexedDataset:
    dataset_id: str
    manifest_uri: str


class IndexState:
    def __init__(self, store: ArtifactStore, max_datasets: int = 8, key: str = STATE_KEY) -> None:
        self.store, self.max_datasets, self.key = store, max_datasets, key
        self._lock = threading.Lock()

    def load(self) -> list[IndexedDataset]:
        uri = self.store.uri(self.key)
        if not self.store.exists(uri):
            return []
        try:
            data = self.store.read_json(uri)
            return [IndexedDataset(d["dataset_id"], d["manifest_uri"]) for d in data["datasets"]]
        except (KeyError, TypeError, ValueError) as exc:
            log.error("ignoring unreadable corpus index state %s: %s", uri, exc)
            return []

    def record(self, dataset: IndexedDataset) -> None:
        with self._lock:
            datasets = [d for d in self.load() if d.dataset_id != dataset.dataset_id] + [dataset]
            datasets = datasets[-self.max_datasets :]
            self.store.write_json(self.key, {"datasets": [d.__dict__ for d in datasets]})
