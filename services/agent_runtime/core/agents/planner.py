"""The planner-searcher agent, after MindSearch: the model writes a graph of sub-questions, the searchers
answer each one from retrieved passages (independent ones concurrently), and a final answer cites them.

The plan is plain text, one sub-question per line, optionally naming the ones it needs first::

    1. What is the capital of Aldoria?
    2. How many people live in Velm? [after 1]

A plan that cannot be parsed (a small model, a model that answers instead of planning) becomes a
one-node graph holding the question itself, so the agent still searches and answers, and says so.
Every step (plan, searches, passages, sub-answers, final answer with its sources) is streamed as it
happens; steps of concurrent searches arrive interleaved, each naming its node in ``arguments``.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from services.agent_runtime.core.agents.base import AgentStep, StepKind, Turn
from services.agent_runtime.core.llm import LLMClient, LLMError

_PLAN_LINE = re.compile(
    r"^\s*(?:[-*]\s*)?(\d{1,2})[.):]\s*(.+?)\s*(?:\[\s*(?:after|depends on|needs)\s*:?\s*([\d,\s and]+)\])?\s*$",
    re.IGNORECASE,
)
log = logging.getLogger(__name__)
_CITATION = re.compile(r"\[(\d{1,3})\]")
MAX_PASSAGE_CHARS = 300


@dataclass(frozen=True)
class Source:
    """A retrieved passage: ``ref`` is what a citation points at (a document id or a URL)."""

    ref: str
    text: str
    origin: str = "corpus"


class Searcher(Protocol):
    name: str

    def search(self, query: str, k: int) -> list[Source]: ...


@dataclass
class PlanNode:
    id: int
    question: str
    depends_on: list[int] = field(default_factory=list)
    answer: str = ""
    citations: list[int] = field(default_factory=list)


def parse_plan(text: str, max_nodes: int) -> tuple[list[PlanNode], list[str]]:
    """Sub-questions and notes on what was dropped; edges to unknown or later nodes are dropped (no cycles)."""
    nodes: list[PlanNode] = []
    notes: list[str] = []
    ids: dict[int, int] = {}  # number as written -> position (ids are renumbered 1..n)
    for line in text.splitlines():
        m = _PLAN_LINE.match(line)
        if not m or len(m.group(2)) < 3:
            continue
        if len(nodes) == max_nodes:
            notes.append(f"plan cut to {max_nodes} sub-questions")
            break
        written = int(m.group(1))
        if written in ids:
            notes.append(f"sub-question {written} appears twice; the first is kept")
            continue
        node = PlanNode(len(nodes) + 1, m.group(2).strip())
        for dep in re.findall(r"\d+", m.group(3) or ""):
            if int(dep) in ids:  # only earlier nodes: the graph stays acyclic
                node.depends_on.append(ids[int(dep)])
            else:
                notes.append(f"sub-question {written}: dependency {dep} is not an earlier sub-question")
        ids[written] = node.id
        nodes.append(node)
    return nodes, notes


def _history_text(history: Sequence[Turn]) -> str:
    return "".join(f"Earlier question: {t.question}\nEarlier answer: {t.answer}\n" for t in history)


class PlannerAgent:
    name = "planner"
    description = (
        "MindSearch-style: plans a graph of sub-questions, searches for independent ones concurrently "
        "and writes a final answer citing its sources."
    )

    def __init__(
        self,
        llm: LLMClient,
        searchers: Sequence[Searcher],
        *,
        model: str,
        max_nodes: int = 5,
        top_k: int = 3,
        max_tokens: int = 96,
        temperature: float = 0.0,
        concurrency: int = 4,
    ) -> None:
        if not searchers:
            raise ValueError("the planner needs at least one searcher")
        self.llm, self.searchers, self.model = llm, list(searchers), model
        self.max_nodes, self.top_k = max_nodes, top_k
        self.max_tokens, self.temperature = max_tokens, temperature
        self.concurrency = concurrency

    async def _complete(self, prompt: str, stop: list[str]) -> str:
        return await self.llm.complete(
            prompt, model=self.model, stop=stop, max_tokens=self.max_tokens, temperature=self.temperature
        )

    def plan_prompt(self, question: str, history: Sequence[Turn]) -> str:
        return (
            "Break the question into short sub-questions that a search engine can answer. Write one per "
            "line as '<n>. <sub-question>', adding '[after <m>]' when it needs the answer of sub-question "
            "<m>.\n"
            f"{_history_text(history)}Question: {question}\nPlan:\n"
        )

    async def run(self, question: str, history: Sequence[Turn] = ()) -> AsyncIterator[AgentStep]:
        question = " ".join(question.split())
        queue: asyncio.Queue[AgentStep | None] = asyncio.Queue()
        task = asyncio.create_task(self._work(question, history, queue))
        index = 0
        try:
            while (step := await queue.get()) is not None:
                index += 1
                step.index = index
                yield step
        finally:
            # the consumer went away (client disconnected) or the run ended: stop every search and call
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _work(
        self, question: str, history: Sequence[Turn], queue: asyncio.Queue[AgentStep | None]
    ) -> None:
        def emit(kind: StepKind, content: str, **kw: Any) -> None:
            queue.put_nowait(AgentStep(kind, content, **kw))

        try:
            await self._solve(question, history, emit)
        except* LLMError as group:  # also from inside a layer's TaskGroup, which cancelled its siblings
            emit("error", str(group.exceptions[0]), fatal=True)
        except* Exception as group:  # a bug must end the run visibly, not as a silent empty stream
            log.error("planner run failed", exc_info=group.exceptions[0])
            emit("error", f"planner failed: {group.exceptions[0]!r}", fatal=True)
        finally:
            queue.put_nowait(None)

    async def _solve(self, question: str, history: Sequence[Turn], emit: Any) -> None:
        raw = await self._complete(self.plan_prompt(question, history), ["\nQuestion:", "\n\n\n"])
        nodes, notes = parse_plan(raw, self.max_nodes)
        if not nodes:
            nodes = [PlanNode(1, question)]
            notes.append("the model wrote no usable plan; searching for the question itself")
        plan = "\n".join(
            f"{n.id}. {n.question}"
            + (f" [after {', '.join(map(str, n.depends_on))}]" if n.depends_on else "")
            for n in nodes
        )
        emit(
            "plan",
            plan,
            arguments={
                "nodes": [{"id": n.id, "question": n.question, "depends_on": n.depends_on} for n in nodes],
                "notes": notes,
            },
        )
        sources: list[Source] = []  # citation n is sources[n - 1]
        limit = asyncio.Semaphore(self.concurrency)
        by_id = {n.id: n for n in nodes}
        done = {n.id: asyncio.Event() for n in nodes}

        async def when_ready(node: PlanNode) -> None:
            # each sub-question starts as soon as its own parents are answered (they are always earlier)
            for parent in node.depends_on:
                await done[parent].wait()
            await self._answer_node(node, by_id, sources, limit, emit)
            done[node.id].set()

        async with asyncio.TaskGroup() as group:
            for node in nodes:
                group.create_task(when_ready(node))
        await self._final(question, history, nodes, sources, emit)

    async def _answer_node(
        self,
        node: PlanNode,
        by_id: dict[int, PlanNode],
        sources: list[Source],
        limit: asyncio.Semaphore,
        emit: Any,
    ) -> None:
        async with limit:
            known = [by_id[d] for d in node.depends_on]
            # a dependent sub-question is searched with what its parents found (e.g. the city's name)
            query = " ".join([node.question, *(p.answer for p in known)])[:300]
            hits: list[Source] = []
            for searcher in self.searchers:
                emit("tool_call", query, tool=searcher.name, arguments={"query": query, "node": node.id})
                try:
                    found = await asyncio.to_thread(searcher.search, query, self.top_k)
                except Exception as exc:  # one failing searcher is an observation, not the end of the run
                    emit("observation", f"error: {exc}", tool=searcher.name, arguments={"node": node.id})
                    continue
                hits += found
                numbered = [(self._cite(sources, s), s) for s in found]
                node.citations += [n for n, _ in numbered]
                text = "\n".join(f"[{n}] {s.text[:MAX_PASSAGE_CHARS]}" for n, s in numbered)
                emit(
                    "observation",
                    text or f"no passage matches {query!r}",
                    tool=searcher.name,
                    arguments={"node": node.id, "citations": [n for n, _ in numbered]},
                )
            context = "".join(f"[{n}] {sources[n - 1].text[:MAX_PASSAGE_CHARS]}\n" for n in node.citations)
            context += "".join(f"Known: {p.question} {p.answer}\n" for p in known)
            out = await self._complete(f"{context}Question: {node.question}\nAnswer:", ["\n"])
            node.answer = out.strip() or (hits[0].text if hits else "unknown")
            emit("thought", f"{node.id}. {node.question} → {node.answer}", arguments={"node": node.id})

    @staticmethod
    def _cite(sources: list[Source], source: Source) -> int:
        for n, s in enumerate(sources, 1):
            if s.ref == source.ref and s.text == source.text:
                return n
        sources.append(source)
        return len(sources)

    async def _final(
        self, question: str, history: Sequence[Turn], nodes: list[PlanNode], sources: list[Source], emit: Any
    ) -> None:
        passages = "".join(f"[{n}] {s.text[:MAX_PASSAGE_CHARS]}\n" for n, s in enumerate(sources, 1))
        found = "".join(
            f"{n.question} {n.answer} " + "".join(f"[{c}]" for c in n.citations) + "\n" for n in nodes
        )
        prompt = (
            f"{passages}{found}{_history_text(history)}"
            f"Answer the question from the passages above, citing them as [n].\nQuestion: {question}\nAnswer:"
        )
        answer = (await self._complete(prompt, ["\nQuestion:", "\n\n"])).strip()
        if not answer:  # nothing written: the sub-answers are the answer
            answer = " ".join(n.answer for n in nodes)
        cited = sorted({int(c) for c in _CITATION.findall(answer) if 0 < int(c) <= len(sources)})
        if not cited:  # the model cited nothing: credit what the searchers found for it
            cited = sorted({c for n in nodes for c in n.citations})
        refs = [
            {"n": n, "ref": sources[n - 1].ref, "origin": sources[n - 1].origin, "text": sources[n - 1].text}
            for n in cited
        ]
        listing = "; ".join(f"[{r['n']}] {r['ref']}" for r in refs)
        emit("answer", answer + (f"\nSources: {listing}" if listing else ""), arguments={"sources": refs})
