"""Wires the agent runtime: LLM client + tools + corpus index (core) onto a ServiceRuntime (bus, gRPC, HTTP)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from services.agent_runtime.catalog import AgentCatalog, RunOptions, react_agent
from services.agent_runtime.config import AgentRuntimeSettings
from services.agent_runtime.corpus import CorpusError, CorpusIndex
from services.agent_runtime.grpc_api import SERVICE_NAME, AgentsServicer, add_to_server
from services.agent_runtime.handlers import register_handlers
from services.agent_runtime.http_api import mount
from services.agent_runtime.index_state import IndexedDataset, IndexState
from services.agent_runtime.llm import LLMClient
from services.agent_runtime.tools import Calculator, SearchCorpus, Tool
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


def build_core(settings: AgentRuntimeSettings, gateway_url: str | None = None) -> AgentCore:
    llm = LLMClient(gateway_url or gateway_base_url(settings), timeout=settings.agent_llm_timeout_s)
    index = CorpusIndex(settings.agent_passage_sentences, settings.agent_max_datasets)
    tools: list[Tool] = [Calculator(), SearchCorpus(index, settings.agent_search_top_k)]
    catalog = AgentCatalog(
        llm,
        RunOptions(
            settings.agent_default_model,
            settings.agent_max_steps,
            settings.agent_max_tokens,
            settings.agent_temperature,
        ),
    )
    catalog.register(*react_agent(tools, with_preamble=settings.agent_react_preamble))
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
