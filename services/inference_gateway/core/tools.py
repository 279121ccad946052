"""Tool calls read from the model's output as it streams (``ToolParser``), for OpenAI's ``tool_calls``.

The forms read, each a JSON object ``{"name": ..., "arguments" | "parameters": {...}}``:
- Hermes / Qwen2.5 / Qwen3: ``<tool_call>{...}</tool_call>``, one block per call;
- InternLM2 / InternLM2.5 / InternLM3: ``<|action_start|><|plugin|>\\n{...}<|action_end|>``, as LMDeploy's
  internlm2 parser reads it. Those markers are special tokens, so a chat request that offers tools
  keeps special tokens in the output text (``SamplingParams.skip_special_tokens``), as LMDeploy and
  vLLM do; where they were dropped anyway the bare object below is still read;
- the bare object, or a list of them, opening the answer (as many models write it, and as
  ``tool_choice: "required"`` makes the model write it).
The form is recognised from the text itself, so no per-model setting is needed.

Streaming, as OpenAI streams calls: ordinary text is streamed as content as it comes; once a call's
name is read and is an offered function, its index, id and name are sent, then its arguments piece by
piece as their text arrives. The arguments are the model's own text of the JSON value (not parsed and
written again), so the pieces of a stream join into exactly the arguments of the whole answer, which is
the same parser fed all the text at once. Text that turns out not to be a call of an offered function
(an unknown name, no object where one must be) is content, never dropped; a call cut short (max_tokens)
keeps the arguments written so far, as OpenAI returns them with ``finish_reason: "length"``.

``tool_choice`` (which calls are read, and whether one is forced): ``core.tool_choice``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

from services.inference_gateway.core.tool_call_scanner import BLANK, CallScanner
from services.inference_gateway.core.tool_choice import ToolPlan


@dataclass(frozen=True)
class CallMarkers:
    """Where one form of call starts and ends in the text."""

    open: str
    close: str


HERMES = CallMarkers("<tool_call>", "</tool_call>")
INTERNLM2 = CallMarkers("<|action_start|><|plugin|>", "<|action_end|>")
MARKERS = (HERMES, INTERNLM2)


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str  # the JSON object as the model wrote it
    id: str


@dataclass(frozen=True)
class ToolCallDelta:
    """A piece of a streamed call: the first of a call carries its id and name, the others more text of
    its arguments."""

    index: int
    arguments: str = ""
    id: str | None = None
    name: str | None = None


# ------------------------------------------------------------------------------------ an answer


@dataclass
class _Call:
    index: int
    name: str
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")
    arguments: str = ""


class ToolParser:
    """The calls in one answer, read as its text arrives: ``feed`` each piece and send what it returns (the
    content that is safe to stream, and pieces of calls), then ``finish`` once the answer is complete.

    ``done``: the text before it is decided (sent as content, part of a call, or dropped); ``cursor``:
    where reading goes on. Text read as a possible call stays undecided until the call's name is read.
    """

    def __init__(self, plan: ToolPlan) -> None:
        self.plan = plan
        self.text = ""
        self.done = self.cursor = 0
        self.state = "start"  # start | content | call | close | list | next | skip
        self.calls: list[_Call] = []
        self._current: _Call | None = None  # the call being read, once its name is read
        self._scanner: CallScanner | None = None
        self._call_at = 0  # where the call being read starts in the text
        self._markers: CallMarkers | None = None  # its form (None: bare)
        self._in_list = False
        self._content: list[str] = []
        self._deltas: list[ToolCallDelta] = []

    def feed(self, piece: str) -> tuple[str, list[ToolCallDelta]]:
        self.text += piece
        if self.plan.named is not None:
            self._named()
        else:
            while self._advance():
                pass
        return self._take()

    def finish(self) -> tuple[str, list[ToolCallDelta]]:
        """What is left once the answer is complete: content held back, or the text of a call that never
        got an offered name."""
        if self.plan.named is not None or self._current is not None:
            pass  # a call cut short keeps the arguments read so far
        elif self.state == "content":
            self._send_content(len(self.text), final=True)
        elif self.state in ("start", "call") or (self.state == "list" and not self.calls):
            self._send_content(len(self.text), raw=True)  # never became a call: it is content
        return self._take()

    def whole(self) -> tuple[str, list[ToolCall]]:
        """(the content, the calls) of the text fed so far."""
        return "".join(self._content), [ToolCall(c.name, c.arguments, c.id) for c in self.calls]

    # ---------------------------------------------------------------------- states
    def _advance(self) -> bool:
        """Read as far as the text allows; True when the state changed and reading goes on."""
        if self.state == "start":  # a bare call or a list of them may open the answer
            at = _skip_blank(self.text, self.cursor)
            if at == len(self.text):
                return False
            if self.text[at] == "{":
                self._open_call(at, None)
            elif self.text[at] == "[":
                self._in_list, self.cursor, self.state = True, at + 1, "list"
            else:
                self.state = "content"
            return True
        if self.state == "content":
            return self._read_content()
        if self.state == "call":
            return self._read_call()
        if self.state == "close":
            return self._read_close()
        if self.state in ("list", "next"):
            return self._read_list()
        self.done = self.cursor = len(self.text)  # skip: one call was asked for, the rest is dropped
        return False

    def _read_content(self) -> bool:
        found = [(at, m) for m in MARKERS if (at := self.text.find(m.open, self.done)) >= 0]
        if not found:
            hold = max(_partial_marker(self.text, m.open) for m in MARKERS)
            self._send_content(len(self.text) - hold)
            return False
        at, markers = min(found, key=lambda f: f[0])
        self._send_content(at, before_call=True)
        self.done = at  # the marker: dropped if a call follows, content if not
        self._open_call(at + len(markers.open), markers)
        return True

    def _open_call(self, at: int, markers: CallMarkers | None) -> None:
        self._call_at = self.cursor = at
        self._markers, self.state = markers, "call"
        self._scanner = CallScanner(self.plan.names)

    def _read_call(self) -> bool:
        scanner = self._scanner
        assert scanner is not None
        scanner.feed(self.text[self.cursor :])
        self.cursor = len(self.text)
        if self._current is None:
            if scanner.failed:
                return self._not_a_call()
            if scanner.name is None:
                return False
            self._current = _Call(len(self.calls), scanner.name)
            self.calls.append(self._current)
            self._deltas.append(ToolCallDelta(self._current.index, id=self._current.id, name=scanner.name))
            self.done = self._call_at  # what came between calls (markers, blanks, brackets) is dropped
        self._send_arguments(self._current, scanner.arguments())
        if scanner.end < 0:
            return False
        self.done = self.cursor = self._call_at + scanner.end
        self._current = self._scanner = None
        if self.plan.single:
            self.state = "skip"
        elif self._markers is not None:
            self.state = "close"
        else:
            self.state = "next" if self._in_list else "content"
        return True

    def _not_a_call(self) -> bool:
        """What was read as a call is none: it is content, and reading goes on from where it began."""
        if self._markers is not None:
            self._send_content(self._call_at, raw=True)  # the marker, as text
        self._in_list, self._scanner, self.state = False, None, "content"
        return True

    def _read_close(self) -> bool:
        assert self._markers is not None
        at = _skip_blank(self.text, self.cursor)
        rest, close = self.text[at:], self._markers.close
        if rest.startswith(close):
            self.done = self.cursor = at + len(close)
        elif close.startswith(rest):
            return False  # the closing marker may be arriving
        self.state = "content"  # no closing marker: what follows is read as content
        return True

    def _read_list(self) -> bool:
        at = _skip_blank(self.text, self.cursor)
        if at == len(self.text):
            return False
        c = self.text[at]
        if self.state == "list" and c == "{":
            self._open_call(at, None)
        elif self.state == "next" and c == ",":
            self.cursor, self.state = at + 1, "list"
        elif c == "]" and self.calls:
            self.done = self.cursor = at + 1
            self._in_list, self.state = False, "content"
        else:  # not a list of calls: from what is not yet decided, content
            self._in_list, self.state = False, "content"
        return True

    def _named(self) -> None:
        """The output is the named function's arguments (guided by its schema)."""
        if self.text and not self.calls:
            assert self.plan.named is not None
            self.calls.append(_Call(0, self.plan.named))
            self._deltas.append(ToolCallDelta(0, id=self.calls[0].id, name=self.plan.named))
        if self.calls:
            self._send_arguments(self.calls[0], self.text)
        self.done = self.cursor = len(self.text)

    # ---------------------------------------------------------------------- output
    def _send_arguments(self, call: _Call, arguments: str) -> None:
        if len(arguments) > len(call.arguments):
            self._deltas.append(ToolCallDelta(call.index, arguments[len(call.arguments) :]))
            call.arguments = arguments

    def _send_content(
        self, end: int, *, final: bool = False, before_call: bool = False, raw: bool = False
    ) -> None:
        """Send ``text[done:end]`` as content. After a call, blanks alone are not content: they are held
        until text follows them, and dropped before the next call or at the end."""
        piece = self.text[self.done : end]
        if self.calls and not raw:
            if before_call or final:
                piece = piece if piece.strip() else ""
            else:
                piece = piece.rstrip(BLANK)
                end = self.done + len(piece)
        if piece:
            self._content.append(piece)
        self.done = max(self.done, end)
        self.cursor = max(self.cursor, self.done)

    def _take(self) -> tuple[str, list[ToolCallDelta]]:
        content = "".join(self._content[self._taken :])
        self._taken = len(self._content)
        deltas, self._deltas = _merged(self._deltas), []
        return content, deltas

    _taken = 0


def _merged(deltas: Iterable[ToolCallDelta]) -> list[ToolCallDelta]:
    """Consecutive pieces of the same call in one: a chunk carries each call once."""
    out: list[ToolCallDelta] = []
    for d in deltas:
        if out and out[-1].index == d.index and d.id is None:
            last = out[-1]
            out[-1] = ToolCallDelta(last.index, last.arguments + d.arguments, last.id, last.name)
        else:
            out.append(d)
    return out


def _skip_blank(text: str, at: int) -> int:
    while at < len(text) and text[at] in BLANK:
        at += 1
    return at


def _partial_marker(text: str, marker: str) -> int:
    """The length of the longest tail of ``text`` that starts ``marker`` (0: none)."""
    return next((k for k in range(min(len(marker) - 1, len(text)), 0, -1) if text.endswith(marker[:k])), 0)


def parse_tool_calls(text: str, plan: ToolPlan) -> tuple[str, list[ToolCall]]:
    """(content, calls) of a whole answer: what a stream of it sends, joined. With calls, the content is
    the text around them, stripped; without, the text as it is."""
    parser = ToolParser(plan)
    parser.feed(text)
    parser.finish()
    content, calls = parser.whole()
    return (content.strip(), calls) if calls else (content, calls)
