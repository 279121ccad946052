"""web_search: a tool over a pluggable web search provider.

The provider interface is one method, ``search(query, k) -> list[WebResult]``. Shipped: SearXNG's JSON
API (self-hostable, no key). With no provider configured the tool answers every call with an error that
says so and how to configure one, so the model (and its user) see why there are no web results.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import httpx

from services.agent_runtime.core.errors import ToolError

NOT_CONFIGURED = (
    "web search is not configured on this runtime: set PUYU_AGENT_WEB_SEARCH_URL to a SearXNG "
    "instance (JSON format enabled) to enable it"
)


@dataclass(frozen=True)
class WebResult:
    title: str
    url: str
    snippet: str


class WebSearchError(RuntimeError):
    """The provider could not answer."""


class SearchProvider(Protocol):
    name: str

    def search(self, query: str, k: int) -> list[WebResult]: ...


class SearxngProvider:
    name = "searxng"

    def __init__(
        self, base_url: str, timeout: float = 10.0, transport: httpx.BaseTransport | None = None
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = httpx.Client(timeout=timeout, transport=transport)

    def search(self, query: str, k: int) -> list[WebResult]:
        try:
            resp = self._client.get(f"{self.base_url}/search", params={"q": query, "format": "json"})
        except httpx.HTTPError as exc:
            raise WebSearchError(f"searxng at {self.base_url} unreachable: {exc}") from exc
        if resp.status_code != 200:
            raise WebSearchError(f"searxng at {self.base_url} answered {resp.status_code}")
        try:
            results = resp.json()["results"]
            return [
                WebResult(str(r.get("title", "")), str(r["url"]), str(r.get("content", "")))
                for r in results[:k]
            ]
        except (ValueError, KeyError, TypeError) as exc:
            raise WebSearchError(f"searxng at {self.base_url} returned an unexpected body: {exc}") from exc


class WebSearch:
    name = "web_search"
    description = "Search the web; returns the best results, each with its URL."
    parameters: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {
            "query": {"type": "string", "description": "what to look for"},
            "k": {"type": "integer", "description": "number of results (default 3)"},
        },
        "required": ["query"],
    }

    def __init__(self, provider: SearchProvider | None, default_k: int = 3, max_k: int = 10) -> None:
        self.provider, self.default_k, self.max_k = provider, default_k, max_k

    def results(self, query: str, k: int) -> list[WebResult]:
        if self.provider is None:
            raise ToolError(NOT_CONFIGURED)
        try:
            return self.provider.search(query, k)
        except WebSearchError as exc:
            raise ToolError(f"web_search: {exc}") from None

    def run(self, args: dict[str, Any]) -> str:
        query = str(args.get("query", "")).strip()
        if not query:
            raise ToolError("web_search: empty query")
        k = args.get("k", self.default_k)
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= self.max_k:
            raise ToolError(f"web_search: k must be an integer from 1 to {self.max_k}")
        hits = self.results(query, k)
        if not hits:
            return f"no web result for {query!r}"
        return "\n".join(f"[{h.url}] {h.title}: {h.snippet}" for h in hits)
