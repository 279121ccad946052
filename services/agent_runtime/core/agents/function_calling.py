"""The tool-calling agent on the OpenAI function-calling API: tools are declared with their JSON schemas
in ``tools``; the model answers with ``tool_calls``; each result goes back as a ``tool`` message.

For any endpoint that implements tool calls: puyu's gateway (it parses the calls the served model writes
into ``tool_calls``), vLLM, LMDeploy, hosted APIs behind ``PUYU_GATEWAY_URL``. A model that replies with
text and no tool call has answered.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

from services.agent_runtime.core.agents.base import AgentStep, StepKind, Turn
from services.agent_runtime.core.errors import ToolError
from services.agent_runtime.core.llm import LLMClient, LLMError
from services.agent_runtime.core.tools.base import Tool, coerce_arguments, tool_schema

SYSTEM = "Answer the user's question. Call the tools when they help; reply with the answer when done."


class FunctionCallingAgent:
    name = "tools"
    description = "Calls tools through OpenAI-format tool calls (tools / tool_calls) of the model endpoint."

    def __init__(
        self,
        llm: LLMClient,
        tools: Sequence[Tool],
        *,
        model: str,
        max_steps: int = 6,
        max_tokens: int = 256,
        temperature: float = 0.0,
    ) -> None:
        self.llm, self.model = llm, model
        self.tools = {t.name: t for t in tools}
        self.schemas = [tool_schema(t) for t in tools]
        self.max_steps, self.max_tokens, self.temperature = max_steps, max_tokens, temperature

    async def run(self, question: str, history: Sequence[Turn] = ()) -> AsyncIterator[AgentStep]:
        messages: list[dict[str, Any]] = [{"role": "system", "content": SYSTEM}]
        for turn in history:
            messages += [
                {"role": "user", "content": turn.question},
                {"role": "assistant", "content": turn.answer},
            ]
        messages.append({"role": "user", "content": question})
        index = 0

        def step(kind: StepKind, content: str, **kw: Any) -> AgentStep:
            nonlocal index
            index += 1
            return AgentStep(kind, content, index, **kw)

        last = ""
        for _ in range(self.max_steps):
            try:
                message = await self.llm.chat_message(
                    messages,
                    model=self.model,
                    tools=self.schemas,
                    max_tokens=self.max_tokens,
                    temperature=self.temperature,
                )
            except LLMError as exc:
                yield step("error", str(exc), fatal=True)
                return
            content = str(message.get("content") or "").strip()
            calls = message.get("tool_calls") or []
            last = content or last
            if not isinstance(calls, list) or not calls:
                yield step("answer", content)
                return
            if content:
                yield step("thought", content)
            messages.append({"role": "assistant", "content": content or None, "tool_calls": calls})
            for n, call in enumerate(calls):
                call_id, name, raw = _unpack(call, n)
                tool = self.tools.get(name)
                if tool is None:
                    observation = f"error: unknown tool {name!r}; tools are: {', '.join(self.tools)}"
                    yield step("error", observation, tool=name)
                else:
                    try:
                        args = coerce_arguments(tool, raw)
                    except ToolError as exc:
                        observation = f"error: {exc}"
                        yield step("error", observation, tool=name)
                    else:
                        yield step("tool_call", raw, tool=name, arguments=args)
                        observation = await _run(tool, args)
                yield step("observation", observation, tool=name)
                messages.append({"role": "tool", "tool_call_id": call_id, "content": observation})
        yield step(
            "error", f"no answer after {self.max_steps} model calls; the answer is the model's last text"
        )
        yield step("answer", last)


def _unpack(call: Any, n: int) -> tuple[str, str, str]:
    """(id, tool name, JSON arguments) of one tool call, tolerating missing ids and object arguments."""
    if not isinstance(call, dict):
        return f"call_{n}", "", ""
    fn = call.get("function")
    if not isinstance(fn, dict):
        fn = {}
    args = fn.get("arguments", "")
    if isinstance(args, dict):  # some servers send the object itself
        args = json.dumps(args)
    return str(call.get("id") or f"call_{n}"), str(fn.get("name", "")), str(args or "{}")


async def _run(tool: Tool, args: dict[str, Any]) -> str:
    try:
        return await asyncio.to_thread(tool.run, args)
    except ToolError as exc:
        return f"error: {exc}"
    except Exception as exc:  # a broken tool is the model's observation, not the service's crash
        return f"error: {tool.name} failed: {type(exc).__name__}: {exc}"
