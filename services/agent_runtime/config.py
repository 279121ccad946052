"""Settings of the agent runtime (``PUYU_AGENT_*`` environment variables)."""

from __future__ import annotations

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
    agent_grpc_port: int | None = None
    agent_http_port: int | None = None
