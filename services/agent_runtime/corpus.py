"""The searchable corpus: passages of the documents of indexed datasets, ranked by BM25.

A dataset is read from its manifest (see ``contracts.datasets``), each shard a JSON-lines
file (gzip/zstd by extension) whose lines carry ``id`` and ``text``. Datasets are kept in the order they
were indexed; a document id seen in several datasets (the same corpus deduplicated again) is kept once,
from the newest. Re-indexing a dataset id replaces it.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import fsspec

from contracts.datasets import DatasetError, shard_uris
from services.agent_runtime.bm25 import BM25, tokenize

log = logging.getLogger(__name__)

_SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s+|\n+")
MAX_PASSAGE_CHARS = 600


class CorpusError(ValueError):
    """A manifest or shard that cannot be read: the dataset cannot be indexed."""


@dataclass(frozen=True)
class Document:
    doc_id: str
    text: str


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


def read_documents(manifest_uri: str) -> Iterator[Document]:
    """Every document of the dataset a manifest describes."""
    try:
        uris = shard_uris(manifest_uri)
    except DatasetError as exc:
        raise CorpusError(str(exc)) from None
    for uri in uris:
        try:
            with fsspec.open(uri, "rt", encoding="utf-8", compression="infer") as f:
                for n, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except ValueError:
                        raise CorpusError(f"{uri}: line {n} is not JSON") from None
                    text = record.get("text") if isinstance(record, dict) else None
                    if not isinstance(text, str):
                        raise CorpusError(f"{uri}: line {n} has no 'text'")
                    yield Document(str(record.get("id") or f"{uri}#{n}"), text)
        except FileNotFoundError:
            raise CorpusError(f"shard not found: {uri}") from None
        except OSError as exc:
            raise CorpusError(f"cannot read shard {uri}: {exc}") from None


def split_passages(text: str, sentences_per_passage: int = 1) -> list[str]:
    sentences = [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]
    passages = []
    for i in range(0, len(sentences), sentences_per_passage):
        passage = " ".join(sentences[i : i + sentences_per_passage])
        passages.append(passage[:MAX_PASSAGE_CHARS])
    return passages


class CorpusIndex:
    """Thread-safe: indexing builds a new BM25 off to the side and swaps it in; searches read a snapshot."""

    def __init__(self, sentences_per_passage: int = 1, max_datasets: int = 8) -> None:
        self.sentences_per_passage = sentences_per_passage
        self.max_datasets = max_datasets
        self._datasets: OrderedDict[str, list[Document]] = OrderedDict()
        self._lock = threading.Lock()
        self._snapshot: tuple[list[Passage], BM25 | None] = ([], None)

    @property
    def dataset_ids(self) -> list[str]:
        return list(self._datasets)

    @property
    def num_passages(self) -> int:
        return len(self._snapshot[0])

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

    def search(self, query: str, k: int = 3) -> list[SearchHit]:
        passages, bm25 = self._snapshot
        if bm25 is None:
            return []
        hits: list[SearchHit] = []
        seen: set[str] = set()
        # ask for more than k: equal passages from different documents are shown once
        for idx, score in bm25.top(tokenize(query), k * 4):
            p = passages[idx]
            key = " ".join(p.text.lower().split())
            if key in seen:
                continue
            seen.add(key)
            hits.append(SearchHit(p.doc_id, p.dataset_id, p.text, score))
            if len(hits) == k:
                break
        return hits

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
        self._snapshot = (passages, bm25)
