"""The corpus the ``search_corpus`` tool searches: datasets read from their manifests, split into
passages, ranked by BM25 and/or sentence embeddings; which datasets it holds is recorded so that a
restarted service rebuilds it."""

from services.agent_runtime.core.corpus.documents import Document, read_documents, split_passages
from services.agent_runtime.core.corpus.index import SEARCH_MODES, CorpusIndex, SearchHit, SearchMode
from services.agent_runtime.core.corpus.state import IndexedDataset, IndexState

__all__ = [
    "SEARCH_MODES",
    "CorpusIndex",
    "Document",
    "IndexState",
    "IndexedDataset",
    "SearchHit",
    "SearchMode",
    "read_documents",
    "split_passages",
]
