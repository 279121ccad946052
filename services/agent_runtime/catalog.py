"""The agents this runtime offers, built per run from the shared LLM client and tools (no bus, no HTTP)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

from services.agent_runtime.agents.base import Agent, AgentStep
from services.agent_runtime.agents.react import ReActAgent
from services.agent_runtime.llm import LLMClient
from services.agent_runtime.tools.base import Tool

MAX_STEPS_LIMIT = 50


class UnknownAgent(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


class InvalidRun(ValueError):
    """A run request that cannot be served (empty question, bad max_steps)."""


@dataclass(frozen=True)
class RunOptions:
    model: str
    max_steps: int
    max_tokens: int = 96
    temperature: float = 0.0


@dataclass(frozen=True)
class AgentInfo:
    name: str
    description: str
    tools: Sequence[Tool] = field(default_factory=tuple)


AgentFactory = Callable[[LLMClient, RunOptions], Agent]


class AgentCatalog:
    def __init__(self, llm: LLMClient, defaults: RunOptions) -> None:
        self.llm = llm
        self.defaults = defaults
        self._agents: dict[str, tuple[AgentInfo, AgentFactory]] = {}

    def register(self, info: AgentInfo, factory: AgentFactory) -> None:
        self._agents[info.name] = (info, factory)

    def list(self) -> list[AgentInfo]:
        return [info for info, _ in self._agents.values()]

    def tools(self) -> dict[str, Tool]:
        """Every tool some agent uses, by name."""
        return {t.name: t for info in self.list() for t in info.tools}

    def info(self, name: str) -> AgentInfo:
        if name not in self._agents:
            raise UnknownAgent(f"unknown agent {name!r}; agents are: {', '.join(self._agents) or 'none'}")
        return self._agents[name][0]

    def options(self, model: str | None = None, max_steps: int | None = None) -> RunOptions:
        if max_steps is not None and not 1 <= max_steps <= MAX_STEPS_LIMIT:
            raise InvalidRun(f"max_steps must be from 1 to {MAX_STEPS_LIMIT}, got {max_steps}")
        d = self.defaults
        return RunOptions(model or d.model, max_steps or d.max_steps, d.max_tokens, d.temperature)

    def run(
        self, name: str, question: str, *, model: str | None = None, max_steps: int | None = None
    ) -> AsyncIterator[AgentStep]:
        """Validate the request now (so adapters can refuse it before streaming), then stream the steps."""
        self.info(name)
        if not question or not question.strip():
            raise InvalidRun("question is empty")
        agent = self._agents[name][1](self.llm, self.options(model, max_steps))
        return agent.run(question)


def react_agent(tools: Sequence[Tool], *, with_preamble: bool = False) -> tuple[AgentInfo, AgentFactory]:
    info = AgentInfo(ReActAgent.name, ReActAgent.description, tuple(tools))

    def factory(llm: LLMClient, opts: RunOptions) -> Agent:
        return ReActAgent(
            llm,
            tools,
            model=opts.model,
            max_steps=opts.max_steps,
            max_tokens=opts.max_tokens,
            temperature=opts.temperature,
            with_preamble=with_preamble,
        )

    return info, factory
