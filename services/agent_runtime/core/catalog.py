"""The agents this runtime offers, built per run from the shared LLM client and tools (no bus, no HTTP)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

from services.agent_runtime.core.agents.base import Agent, AgentStep, Turn
from services.agent_runtime.core.agents.function_calling import FunctionCallingAgent
from services.agent_runtime.core.agents.planner import PlannerAgent, Searcher
from services.agent_runtime.core.agents.react import ReActAgent
from services.agent_runtime.core.errors import InvalidRun, UnknownAgent
from services.agent_runtime.core.llm import LLMClient
from services.agent_runtime.core.sessions import SessionStore, check_session_id
from services.agent_runtime.core.tools.base import Tool

MAX_STEPS_LIMIT = 50


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
    def __init__(self, llm: LLMClient, defaults: RunOptions, sessions: SessionStore | None = None) -> None:
        self.llm = llm
        self.defaults = defaults
        self.sessions = sessions
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
        self,
        name: str,
        question: str,
        *,
        model: str | None = None,
        max_steps: int | None = None,
        session_id: str | None = None,
        history: Sequence[Turn] = (),
    ) -> AsyncIterator[AgentStep]:
        """Validate the request now (so adapters can refuse it before streaming), then stream the steps.

        With a session id (and a session store) the earlier turns of that session are the history and the
        answer is recorded as a new turn; ``history`` is for stateless callers that carry their own.
        """
        self.info(name)
        if not question or not question.strip():
            raise InvalidRun("question is empty")
        if session_id is not None:
            check_session_id(session_id)
        agent = self._agents[name][1](self.llm, self.options(model, max_steps))
        if session_id is None or self.sessions is None:
            return agent.run(question, history)
        return self._in_session(agent, name, question, session_id, self.sessions)

    async def _in_session(
        self, agent: Agent, name: str, question: str, session_id: str, store: SessionStore
    ) -> AsyncIterator[AgentStep]:
        async with store.lock(session_id):  # one run at a time per session: it needs the previous answer
            history = await asyncio.to_thread(store.history, session_id)
            answer = None
            async for step in agent.run(question, history):
                answer = step.content if step.kind == "answer" else answer
                yield step
            if answer is not None:
                await asyncio.to_thread(store.append, session_id, name, question, answer)


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


def planner_agent(
    searchers: Sequence[Searcher],
    tools: Sequence[Tool] = (),
    *,
    max_nodes: int = 5,
    top_k: int = 3,
    concurrency: int = 4,
) -> tuple[AgentInfo, AgentFactory]:
    info = AgentInfo(PlannerAgent.name, PlannerAgent.description, tuple(tools))

    def factory(llm: LLMClient, opts: RunOptions) -> Agent:
        return PlannerAgent(
            llm,
            searchers,
            model=opts.model,
            max_nodes=min(max_nodes, opts.max_steps),
            top_k=top_k,
            max_tokens=opts.max_tokens,
            temperature=opts.temperature,
            concurrency=concurrency,
        )

    return info, factory


def function_calling_agent(tools: Sequence[Tool]) -> tuple[AgentInfo, AgentFactory]:
    info = AgentInfo(FunctionCallingAgent.name, FunctionCallingAgent.description, tuple(tools))

    def factory(llm: LLMClient, opts: RunOptions) -> Agent:
        return FunctionCallingAgent(
            llm,
            tools,
            model=opts.model,
            max_steps=opts.max_steps,
            max_tokens=max(opts.max_tokens, 256),  # chat answers and JSON arguments need more room
            temperature=opts.temperature,
        )

    return info, factory
