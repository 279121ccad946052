"""What every agent yields: a stream of steps (plan, thought, tool_call, observation, answer, error)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

StepKind = Literal["plan", "thought", "tool_call", "observation", "answer", "error"]


@dataclass(frozen=True)
class Turn:
    """One earlier exchange of a session: what the agent is reminded of."""

    question: str
    answer: str


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

    def run(self, question: str, history: Sequence[Turn] = ()) -> AsyncIterator[AgentStep]: ...
