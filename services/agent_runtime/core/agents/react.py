"""The ReAct agent, speaking the classic text protocol the demo model was trained on (``shared.samples``)::

    Question: <question>
    Thought: <text>
    Action: <tool name>
    Action Input: <JSON arguments>
    Observation: <tool output>
    ... (repeat)
    Thought: <text>
    Final Answer: <answer>

Each model call continues the transcript up to the next ``Observation:``; the agent runs the tool and
writes the observation itself.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from services.agent_runtime.core.agents.base import AgentStep, StepKind, Turn
from services.agent_runtime.core.errors import ToolError
from services.agent_runtime.core.llm import LLMClient, LLMError
from services.agent_runtime.core.tools.base import Tool, coerce_arguments

STOP = ["Observation:", "\nQuestion:"]
_LABEL = r"(?im)^[ \t]*{}[ \t]*:"
_FINAL = re.compile(_LABEL.format(r"final[ \t]*answer"))
_ACTION = re.compile(_LABEL.format(r"action"))
_INPUT = re.compile(_LABEL.format(r"action[ \t]*input"))
_THOUGHT = re.compile(_LABEL.format(r"thought"))
_NEXT_LABEL = re.compile(
    r"(?im)^[ \t]*(?:thought|action|action[ \t]*input|observation|question|final[ \t]*answer)"
    r"[ \t]*:"
)
FORMAT_HELP = (
    "Invalid format: write 'Action: <tool>' and 'Action Input: <JSON arguments>', "
    "or 'Final Answer: <answer>'."
)


@dataclass
class ParsedTurn:
    thought: str = ""
    action: str | None = None
    action_input: str = ""
    final_answer: str | None = None


def parse_turn(text: str) -> ParsedTurn:
    """Parse one model turn (the text after ``Thought:``). Tolerates a missing thought, extra spaces, any case."""
    text = text.replace("\r\n", "\n")
    # the prompt ends with "Thought:", so a repeated label at the start is noise
    # a leading newline lets the line-anchored label patterns match a label on the first line
    text = "\n" + re.sub(r"^\s*thought\s*:", "", text, flags=re.IGNORECASE)
    final, action = _FINAL.search(text), _ACTION.search(text)
    first = min((m for m in (final, action) if m), key=lambda m: m.start(), default=None)
    thought = _clean(text[: first.start()] if first else text)
    if first is None:
        return ParsedTurn(thought=thought)
    if first is final:
        return ParsedTurn(thought=thought, final_answer=_until_next_label(text[final.end() :]))
    assert action is not None
    line_end = text.find("\n", action.end())
    name = text[action.end() : line_end if line_end >= 0 else len(text)].strip().strip("`'\"").strip()
    inp = _INPUT.search(text, action.end())
    args = _until_next_label(text[inp.end() :]) if inp else ""
    return ParsedTurn(thought=thought, action=name, action_input=args)


def _until_next_label(text: str) -> str:
    nxt = _NEXT_LABEL.search(text)
    return (text[: nxt.start()] if nxt else text).strip()


def _clean(text: str) -> str:
    return _THOUGHT.sub("", text).strip()


def preamble(tools: Sequence[Tool]) -> str:
    lines = ["Answer the question. You can use these tools:"]
    lines += [f"{t.name}: {t.description} Arguments: {json.dumps(t.parameters)}" for t in tools]
    lines += [
        "Use this format:",
        "Question: ...",
        "Thought: ...",
        "Action: <tool name>",
        "Action Input: <JSON arguments>",
        "Observation: ...",
        "Thought: ...",
        "Final Answer: ...",
        "",
    ]
    return "\n".join(lines) + "\n"


class ReActAgent:
    name = "react"
    description = (
        "Reasons step by step in the ReAct text protocol and calls tools (calculator, corpus search)."
    )

    def __init__(
        self,
        llm: LLMClient,
        tools: Sequence[Tool],
        *,
        model: str,
        max_steps: int = 6,
        max_tokens: int = 96,
        temperature: float = 0.0,
        with_preamble: bool = False,
    ) -> None:
        self.llm, self.model = llm, model
        self.tools = {t.name.lower(): t for t in tools}
        self.max_steps, self.max_tokens, self.temperature = max_steps, max_tokens, temperature
        self.prefix = preamble(tools) if with_preamble else ""

    def prompt(self, question: str, history: Sequence[Turn] = ()) -> str:
        # earlier turns of the session in the same protocol, as finished exchanges
        past = "".join(
            f"Question: {' '.join(t.question.split())}\nThought: I now know the final answer.\n"
            f"Final Answer: {' '.join(t.answer.split())}\n"
            for t in history
        )
        return f"{self.prefix}{past}Question: {' '.join(question.split())}\nThought:"

    async def run(self, question: str, history: Sequence[Turn] = ()) -> AsyncIterator[AgentStep]:
        transcript = self.prompt(question, history)
        steps = _Counter()
        last_text = ""
        for _ in range(self.max_steps):
            try:
                out = await self.llm.complete(
                    transcript,
                    model=self.model,
                    stop=STOP,
                    max_tokens=self.max_tokens,
                    temperature=self.temperature,
                )
            except LLMError as exc:
                yield steps.next("error", str(exc), fatal=True)
                return
            turn = parse_turn(out)
            last_text = out.strip() or last_text
            if turn.thought:
                yield steps.next("thought", turn.thought)
            if turn.final_answer is not None:
                yield steps.next("answer", turn.final_answer)
                return
            if turn.action is None:
                yield steps.next("error", FORMAT_HELP)
                transcript += f" {turn.thought}\nObservation: {FORMAT_HELP}\nThought:"
                continue
            tool = self.tools.get(turn.action.lower())
            if tool is None:
                observation = f"unknown tool {turn.action}; tools are: {', '.join(self.tools)}"
                yield steps.next("error", observation, tool=turn.action)
            else:
                try:
                    args = coerce_arguments(tool, turn.action_input)
                except ToolError as exc:
                    args, observation = {}, f"error: {exc}"
                    yield steps.next("error", observation, tool=tool.name)
                else:
                    yield steps.next("tool_call", turn.action_input, tool=tool.name, arguments=args)
                    observation = await self._run_tool(tool, args)
            yield steps.next("observation", observation, tool=turn.action)
            transcript += (
                f" {turn.thought}\nAction: {turn.action}\nAction Input: {turn.action_input}\n"
                f"Observation: {observation}\nThought:"
            )
        yield steps.next(
            "error", f"no Final Answer after {self.max_steps} steps; the answer is the model's last output"
        )
        yield steps.next("answer", _until_next_label(last_text) or last_text)

    async def _run_tool(self, tool: Tool, args: dict[str, Any]) -> str:
        # tools are plain (possibly CPU-heavy) Python: keep the event loop free
        try:
            return await asyncio.to_thread(tool.run, args)
        except ToolError as exc:
            return f"error: {exc}"
        except Exception as exc:  # a broken tool is the model's observation, not the service's crash
            return f"error: {tool.name} failed: {type(exc).__name__}: {exc}"


class _Counter:
    def __init__(self) -> None:
        self.index = 0

    def next(self, kind: StepKind, content: str, **kw: Any) -> AgentStep:
        self.index += 1
        return AgentStep(kind, content, self.index, **kw)
