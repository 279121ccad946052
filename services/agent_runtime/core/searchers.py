"""The planner's searchers over the search tools: results as citable sources instead of observation text."""

from __future__ import annotations

from services.agent_runtime.core.agents.planner import Source
from services.agent_runtime.core.tools.search import SearchCorpus
from services.agent_runtime.core.tools.web_search import WebSearch


class CorpusSearcher:
    def __init__(self, tool: SearchCorpus) -> None:
        self.tool = tool
        self.name = tool.name

    def search(self, query: str, k: int) -> list[Source]:
        if not self.tool.index.dataset_ids:
            raise LookupError("no corpus is indexed yet")
        return [Source(h.doc_id, h.text, "corpus") for h in self.tool.index.search(query, k)]


class WebSearcher:
    def __init__(self, tool: WebSearch) -> None:
        self.tool = tool
        self.name = tool.name

    def search(self, query: str, k: int) -> list[Source]:
        return [Source(r.url, f"{r.title}: {r.snippet}", "web") for r in self.tool.results(query, k)]
