"""What every agent yields: a stream of steps (thought, tool_call, observation, answer, error)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

StepKind = Literal["thought", "tool_call", "observation", "answer", "error"]


@dataclass
class AgentStep:
    kind: StepKind
    content: str
    index: int = 0
    tool: str = ""
    arguments: dict[str, Any] = field(default_factory=dict)
    # an error that ended the run (the model could not be reached): adapters map it to a failure
    fatal: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Agent(Protocol):
    name: str
    description: str

    def run(self, question: str) -> AsyncIterator[AgentStep]: ...
