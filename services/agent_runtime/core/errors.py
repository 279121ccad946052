"""What the agent runtime refuses: requests that can never succeed as asked.

Each subclasses ``shared.errors.Refusal``, so every adapter answers them the same way: the bus
dead-letters the event without retries, gRPC and HTTP answer with the reason (``NotFound`` as not
found, the others as invalid arguments). A model endpoint that fails is not a refusal: it is
``llm.LLMError`` (retried by the caller, or shown as a fatal step).
"""

from __future__ import annotations

from shared.errors import Refusal


class AgentRefusal(Refusal):
    """A request the agent runtime cannot serve as asked."""


class NotFound(AgentRefusal):
    """An unknown agent, tool or session."""


class UnknownAgent(NotFound):
    """No agent of that name in the catalog."""


class UnknownTool(NotFound):
    """No tool of that name among the agents' tools."""


class SessionNotFound(NotFound):
    """No such session, or this runtime keeps no sessions."""


class InvalidRun(AgentRefusal):
    """A run request that cannot be served (empty question, bad max_steps, a chat not ending with a user turn)."""


class InvalidSession(AgentRefusal):
    """A session id that cannot name a session, or a session that cannot be read."""


class CorpusError(AgentRefusal):
    """A manifest or shard that cannot be read: the dataset cannot be indexed."""


class ToolError(AgentRefusal):
    """A tool call that cannot be done (bad arguments, bad expression): the message is shown to the model."""
