"""One agent run as the adapters see it: its steps as they come, its session, its model and its answer."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from services.agent_runtime.core.agents.base import AgentStep, Turn
from services.agent_runtime.core.errors import InvalidRun


class AgentFailed(RuntimeError):
    """A run ended by a fatal step (the model endpoint could not be reached): not the caller's fault."""


@dataclass(frozen=True)
class Message:
    """One message of an OpenAI-style conversation."""

    role: str
    content: str | None = None


@dataclass(frozen=True)
class RunResult:
    steps: list[AgentStep]
    answer: str | None


@dataclass
class AgentRun:
    """A validated run: iterate it for the steps (stopping early cancels the agent's pending work)."""

    agent: str
    model: str
    session_id: str | None
    steps: AsyncIterator[AgentStep]
    answer: str | None = field(default=None, init=False)  # the last answer seen so far

    def __aiter__(self) -> AsyncIterator[AgentStep]:
        return self._track()

    async def _track(self) -> AsyncIterator[AgentStep]:
        async for step in self.steps:
            if step.kind == "answer":
                self.answer = step.content
            yield step

    async def result(self) -> RunResult:
        """Every step and the answer; raises AgentFailed when a fatal step ended the run."""
        steps = [step async for step in self]
        fatal = next((s for s in steps if s.fatal), None)
        if fatal is not None:
            raise AgentFailed(fatal.content)
        return RunResult(steps, self.answer)


def chat_turns(messages: Sequence[Message]) -> tuple[str, list[Turn]]:
    """The question (the last message, a user's) and the earlier (user, assistant) pairs: a stateless
    caller carries the memory of the conversation itself."""
    last = messages[-1] if messages else None
    if last is None or last.role != "user" or not last.content:
        raise InvalidRun("the last message must be a user message with content")
    turns: list[Turn] = []
    pending: str | None = None
    for m in messages[:-1]:
        if m.role == "user" and m.content:
            pending = m.content
        elif m.role == "assistant" and m.content and pending is not None:
            turns.append(Turn(pending, m.content))
            pending = None
    return last.content, turns
