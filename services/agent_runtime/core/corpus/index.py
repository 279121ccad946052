"""The searchable corpus: passages of the documents of indexed datasets, ranked by BM25, by sentence
embeddings (cosine), or by both fused with reciprocal rank fusion (``hybrid``, the default when an
embedder is configured).

Datasets are kept in the order they were indexed; a document id seen in several datasets (the same
corpus deduplicated again) is kept once, from the newest. Re-indexing a dataset id replaces it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from services.agent_runtime.core.corpus.bm25 import BM25, tokenize
from services.agent_runtime.core.corpus.documents import Document, read_documents, split_passages
from services.agent_runtime.core.corpus.embeddings import Embedder, EmbeddingsUnavailable

log = logging.getLogger(__name__)

RRF_K = 60  # the constant of Cormack et al.'s reciprocal rank fusion
SearchMode = Literal["bm25", "embedding", "hybrid"]
SEARCH_MODES: tuple[SearchMode, ...] = ("bm25", "embedding", "hybrid")


@dataclass(frozen=True)
class Passage:
    doc_id: str
    dataset_id: str
    text: str


@dataclass(frozen=True)
class SearchHit:
    doc_id: str
    dataset_id: str
    text: str
    score: float


@dataclass(frozen=True)
class _Snapshot:
    passages: list[Passage]
    bm25: BM25 | None = None
    vectors: np.ndarray | None = None  # unit rows, one per passage, when an embedder is set


class CorpusIndex:
    """Thread-safe: indexing builds new indexes off to the side and swaps them in; searches read a snapshot."""

    def __init__(
        self, sentences_per_passage: int = 1, max_datasets: int = 8, embedder: Embedder | None = None
    ) -> None:
        self.sentences_per_passage = sentences_per_passage
        self.max_datasets = max_datasets
        self.embedder = embedder
        self._datasets: OrderedDict[str, list[Document]] = OrderedDict()
        self._lock = threading.Lock()
        self._snapshot = _Snapshot([])
        self._embedded = threading.Event()
        self._embedded.set()
        self._embed_error: str | None = None

    @property
    def default_mode(self) -> SearchMode:
        return "hybrid" if self.embedder is not None else "bm25"

    @property
    def dataset_ids(self) -> list[str]:
        return list(self._datasets)

    @property
    def num_passages(self) -> int:
        return len(self._snapshot.passages)

    def add_documents(self, dataset_id: str, documents: Iterable[Document]) -> int:
        docs = list(documents)
        with self._lock:
            self._datasets.pop(dataset_id, None)
            self._datasets[dataset_id] = docs
            while len(self._datasets) > self.max_datasets:
                dropped, _ = self._datasets.popitem(last=False)
                log.info("corpus index: dropped oldest dataset %s", dropped)
            self._rebuild()
        return len(docs)

    def add_manifest(self, dataset_id: str, manifest_uri: str) -> int:
        """Index (or re-index) a dataset from its manifest; returns its number of documents."""
        return self.add_documents(dataset_id, read_documents(manifest_uri))

    def search(self, query: str, k: int = 3, mode: SearchMode | None = None) -> list[SearchHit]:
        snap = self._snapshot
        if not snap.passages:
            return []
        mode = mode or self.default_mode
        # ask for more than k: equal passages from different documents are shown once
        if mode == "bm25":
            ranked = snap.bm25.top(tokenize(query), k * 4) if snap.bm25 else []
        elif mode == "embedding":
            ranked = self._dense(snap, query, k * 4)
        elif mode == "hybrid":
            lexical = snap.bm25.top(tokenize(query), k * 4) if snap.bm25 else []
            # until the vectors of a new snapshot are ready, hybrid is BM25 alone
            ranked = _fuse(lexical, self._dense(snap, query, k * 4)) if snap.vectors is not None else lexical
        else:
            raise ValueError(f"unknown search mode {mode!r}; modes are: {', '.join(SEARCH_MODES)}")
        hits: list[SearchHit] = []
        seen: set[str] = set()
        for idx, score in ranked:
            p = snap.passages[idx]
            key = " ".join(p.text.lower().split())
            if key in seen:
                continue
            seen.add(key)
            hits.append(SearchHit(p.doc_id, p.dataset_id, p.text, score))
            if len(hits) == k:
                break
        return hits

    def wait_embeddings(self, timeout: float | None = None) -> bool:
        """True once the passages of the current snapshot have their vectors (dense search is ready)."""
        return self._embedded.wait(timeout)

    def _dense(self, snap: _Snapshot, query: str, n: int) -> list[tuple[int, float]]:
        if self.embedder is None:
            raise EmbeddingsUnavailable("embedding search is not enabled in this runtime")
        if snap.vectors is None and self._embed_error:
            raise EmbeddingsUnavailable(self._embed_error)
        if snap.vectors is None:
            raise EmbeddingsUnavailable(
                f"the embeddings of {len(snap.passages)} passages are still being computed"
            )
        scores = snap.vectors @ self.embedder.encode([query])[0]
        n = min(n, scores.size)
        best = np.argpartition(-scores, n - 1)[:n]
        return sorted(((int(i), float(scores[i])) for i in best), key=lambda t: (-t[1], t[0]))

    def _rebuild(self) -> None:
        newest: dict[str, tuple[str, Document]] = {}
        for dataset_id, docs in self._datasets.items():  # oldest first: newer datasets win
            for doc in docs:
                newest[doc.doc_id] = (dataset_id, doc)
        passages = [
            Passage(doc.doc_id, dataset_id, text)
            for dataset_id, doc in newest.values()
            for text in split_passages(doc.text, self.sentences_per_passage)
        ]
        bm25 = BM25([tokenize(p.text) for p in passages]) if passages else None
        self._snapshot = _Snapshot(passages, bm25)
        if self.embedder is not None and passages:
            # embedding a corpus takes far longer than BM25: searchable now, dense once the thread is done
            self._embedded.clear()
            threading.Thread(target=self._embed, args=(self._snapshot,), daemon=True, name="embed").start()

    def _embed(self, snap: _Snapshot) -> None:
        assert self.embedder is not None
        started = time.monotonic()
        try:
            vectors = self.embedder.encode([p.text for p in snap.passages])
        except Exception as exc:  # the model cannot load: searches stay lexical and say why when asked
            log.exception("corpus index: cannot compute embeddings; search stays BM25")
            self._embed_error = f"embeddings unavailable: {exc}"
            self._embedded.set()
            return
        with self._lock:
            if self._snapshot is snap:  # a newer snapshot has its own thread
                self._snapshot = _Snapshot(snap.passages, snap.bm25, vectors)
                self._embedded.set()
        log.info(
            "corpus index: embedded %d passages in %.1f s", len(snap.passages), time.monotonic() - started
        )


def _fuse(*rankings: list[tuple[int, float]]) -> list[tuple[int, float]]:
    """Reciprocal rank fusion: a passage's score is the sum of 1 / (RRF_K + rank) over the rankings."""
    fused: dict[int, float] = {}
    for ranking in rankings:
        for rank, (idx, _) in enumerate(ranking, 1):
            fused[idx] = fused.get(idx, 0.0) + 1.0 / (RRF_K + rank)
    return sorted(fused.items(), key=lambda t: (-t[1], t[0]))
