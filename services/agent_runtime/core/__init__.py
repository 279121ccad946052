"""The agent runtime's core: agents that answer questions by calling a model endpoint and tools, the
corpus index the ``search_corpus`` tool searches, sessions, and the python sandbox.

Plain Python: no bus, no gRPC, no HTTP server (the model endpoint is reached with an HTTP client, as
any inference client does). ``AgentRuntime`` is what the adapters and ``puyu agent run`` call;
``build_runtime`` assembles it from the settings.
"""

from services.agent_runtime.core.agents.base import AgentStep, Turn
from services.agent_runtime.core.build import build_runtime
from services.agent_runtime.core.catalog import AgentCatalog, AgentInfo, RunOptions
from services.agent_runtime.core.errors import (
    AgentRefusal,
    CorpusError,
    InvalidRun,
    InvalidSession,
    NotFound,
    SessionNotFound,
    ToolError,
    UnknownAgent,
    UnknownTool,
)
from services.agent_runtime.core.runs import AgentFailed, AgentRun, Message, RunResult
from services.agent_runtime.core.runtime import AgentRuntime

__all__ = [
    "AgentCatalog",
    "AgentFailed",
    "AgentInfo",
    "AgentRefusal",
    "AgentRun",
    "AgentRuntime",
    "AgentStep",
    "CorpusError",
    "InvalidRun",
    "InvalidSession",
    "Message",
    "NotFound",
    "RunOptions",
    "RunResult",
    "SessionNotFound",
    "ToolError",
    "Turn",
    "UnknownAgent",
    "UnknownTool",
    "build_runtime",
]
