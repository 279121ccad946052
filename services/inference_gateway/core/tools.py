"""Tool calls in model output → OpenAI ``tool_calls``, for whole answers and for streams.

The forms read, each a JSON object ``{"name": ..., "arguments" | "parameters": {...}}``:
- Hermes / Qwen2.5 / Qwen3: ``<tool_call>{...}</tool_call>``, one block per call;
- InternLM2 / InternLM2.5 / InternLM3: ``<|action_start|><|plugin|>\n{...}<|action_end|>``, as LMDeploy's
  internlm2 parser reads it. Those markers are special tokens, so a chat request that offers tools
  keeps special tokens in the output text (``SamplingParams.skip_special_tokens``), as LMDeploy and
  vLLM do; where they were dropped anyway the bare object below is still read;
- the bare object (or a list of them), as many other models write it.
The form is recognised from the text itself, so no per-model setting is needed. A stream is split so
that ordinary text is streamed as it comes while anything that may be a tool call is held back until
the answer ends and parsed as a whole: a call is never sent half-formed, the common failure of
streamed tool calls. Text that does not parse as a call of an offered tool is returned as content,
never dropped.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class CallMarkers:
    """Where one form of call starts and ends in the text."""

    open: str
    close: str

    def block(self) -> re.Pattern[str]:
        """One call's JSON; the last one may lack its close (the answer ended first)."""
        return re.compile(re.escape(self.open) + r"\s*(.*?)\s*(?:" + re.escape(self.close) + r"|$)", re.S)


HERMES = CallMarkers("<tool_call>", "</tool_call>")
INTERNLM2 = CallMarkers("<|action_start|><|plugin|>", "<|action_end|>")
MARKERS = (HERMES, INTERNLM2)
_BLOCKS = {m.open: m.block() for m in MARKERS}


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str  # a JSON object as text, as OpenAI sends it
    id: str


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


def _first_marker(text: str) -> tuple[int, CallMarkers | None]:
    """Where the first call marker starts in ``text`` and which it is; (-1, None) without one."""
    found = [(at, m) for m in MARKERS if (at := text.find(m.open)) >= 0]
    return min(found, key=lambda f: f[0]) if found else (-1, None)


def parse_tool_calls(text: str, names: set[str]) -> tuple[str, list[ToolCall]]:
    """(content before the calls, the calls) or (text, []) when the text holds no call of an offered tool."""
    start, markers = _first_marker(text)
    if markers is not None:
        calls = []
        for body in _BLOCKS[markers.open].findall(text[start:]):
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
        at, markers = _first_marker(rest)
        if markers is not None:
            self.holding = True
            return self._send(at)
        # hold a tail that could be the start of a marker
        hold = max(_partial_marker(rest, m.open) for m in MARKERS)
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


def _partial_marker(text: str, marker: str) -> int:
    """The length of the longest tail of ``text`` that starts ``marker`` (0: none)."""
    return next((k for k in range(min(len(marker) - 1, len(text)), 0, -1) if text.endswith(marker[:k])), 0)
