"""search_corpus: search over the indexed corpus (BM25, embeddings or both); the observation lists
``[<doc id>] <passage>`` lines."""

from __future__ import annotations

from typing import Any, ClassVar

from services.agent_runtime.core.corpus.embeddings import EmbeddingsUnavailable
from services.agent_runtime.core.corpus.index import SEARCH_MODES, CorpusIndex
from services.agent_runtime.core.errors import ToolError


class SearchCorpus:
    name = "search_corpus"
    description = "Search the document corpus; returns the best passages, each with its document id."
    parameters: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {
            "query": {"type": "string", "description": "keywords, e.g. capital of Aldoria"},
            "k": {"type": "integer", "description": "number of passages (default 3)"},
            "mode": {
                "type": "string",
                "enum": list(SEARCH_MODES),
                "description": "bm25 (keywords), embedding (meaning) or hybrid (both; the default when enabled)",
            },
        },
        "required": ["query"],
    }

    def __init__(self, index: CorpusIndex, default_k: int = 3, max_k: int = 20) -> None:
        self.index = index
        self.default_k = default_k
        self.max_k = max_k

    def run(self, args: dict[str, Any]) -> str:
        query = str(args.get("query", "")).strip()
        if not query:
            raise ToolError("search_corpus: empty query")
        k = args.get("k", self.default_k)
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= self.max_k:
            raise ToolError(f"search_corpus: k must be an integer from 1 to {self.max_k}")
        mode = args.get("mode")
        if mode is not None and mode not in SEARCH_MODES:
            raise ToolError(f"search_corpus: mode must be one of {', '.join(SEARCH_MODES)}, got {mode!r}")
        if not self.index.dataset_ids:
            return "no corpus is indexed yet"
        try:
            hits = self.index.search(query, k, mode)
        except EmbeddingsUnavailable as exc:
            raise ToolError(f"search_corpus: {exc}; use mode bm25") from None
        if not hits:
            return f"no passage matches {query!r}"
        return "\n".join(f"[{h.doc_id}] {h.text}" for h in hits)
