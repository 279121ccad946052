"""Tool calls in model output → OpenAI ``tool_calls``, for whole answers and for streams.

Models trained on the Hermes / Qwen convention write ``<tool_call>{"name": ..., "arguments":
{...}}</tool_call>``; many others write the bare JSON object (``arguments`` or ``parameters``). InternLM2
has markers of its own (``<|action_start|><|plugin|>{"name": ..., "parameters": {...}}<|action_end|>``),
which are not among the forms read here. A stream is split so that ordinary text is
streamed as it comes while anything that may be a tool call is held back until the answer ends and
parsed as a whole: a call is never sent half-formed, the common failure of streamed tool calls.
Text that does not parse as a call of an offered tool is returned as content, never dropped.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

OPEN, CLOSE = "<tool_call>", "</tool_call>"
_BLOCK = re.compile(re.escape(OPEN) + r"\s*(.*?)\s*(?:" + re.escape(CLOSE) + r"|$)", re.S)


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str  # a JSON object as text, as OpenAI sends it
    id: str

    def openai(self, index: int | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }
        if index is not None:
            out["index"] = index
        return out


def _call(obj: Any, names: set[str]) -> ToolCall | None:
    if not isinstance(obj, dict) or obj.get("name") not in names:
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            return None
    if not isinstance(args, dict):
        return None
    return ToolCall(str(obj["name"]), json.dumps(args, ensure_ascii=False), f"call_{uuid.uuid4().hex[:24]}")


def parse_tool_calls(text: str, names: set[str]) -> tuple[str, list[ToolCall]]:
    """(content before the calls, the calls) or (text, []) when the text holds no call of an offered tool."""
    start = text.find(OPEN)
    if start >= 0:
        calls = []
        for body in _BLOCK.findall(text[start:]):
            try:
                call = _call(json.loads(body), names)
            except json.JSONDecodeError:
                call = None
            if call is None:
                return text, []
            calls.append(call)
        return (text[:start].strip(), calls) if calls else (text, [])
    stripped = text.strip()
    try:
        obj = json.loads(stripped)
    except json.JSONDecodeError:
        return text, []
    objs = obj if isinstance(obj, list) else [obj]
    parsed = [_call(o, names) for o in objs]
    if not parsed or any(c is None for c in parsed):
        return text, []
    return "", [c for c in parsed if c is not None]


class ToolStream:
    """Feeds streamed text; returns the part that is safe to stream as content, holds back possible calls."""

    def __init__(self, names: set[str]) -> None:
        self.names = names
        self.text = ""
        self.sent = 0
        self.holding = False

    def feed(self, piece: str) -> str:
        self.text += piece
        if self.holding:
            return ""
        rest = self.text[self.sent :]
        if not self.text.strip():
            return ""
        if self.text.lstrip().startswith("{") and self.sent == 0:
            self.holding = True
            return ""
        at = rest.find(OPEN)
        if at >= 0:
            self.holding = True
            return self._send(at)
        # hold a tail that could be the start of the marker
        hold = next((k for k in range(min(len(OPEN) - 1, len(rest)), 0, -1) if rest.endswith(OPEN[:k])), 0)
        return self._send(len(rest) - hold)

    def _send(self, n: int) -> str:
        out = self.text[self.sent : self.sent + n]
        self.sent += n
        return out

    def finish(self) -> tuple[str, list[ToolCall]]:
        """(content not yet streamed, tool calls) once the answer is complete."""
        rest = self.text[self.sent :]
        if not self.holding:
            return rest, []
        content, calls = parse_tool_calls(rest, self.names)
        return (content, calls) if calls else (rest, [])
