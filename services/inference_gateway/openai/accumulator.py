"""One choice's output as its deltas arrive, shared by streamed and whole answers.

``add`` takes the next delta and returns what it adds to the choice (what a stream sends now); the
accumulator keeps the totals (what a whole answer sends at the end), so the two never disagree.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from services.inference_gateway.core.engine import Delta, TokenLogprob
from services.inference_gateway.core.tools import ToolCall, ToolStream, parse_tool_calls
from services.inference_gateway.openai.protocol import (
    ChatLogprobs,
    ChatTokenLogprob,
    CompletionLogprobs,
    PromptTokensDetails,
    TopLogprob,
    UsageInfo,
)


def finish_reason(reason: str | None) -> str | None:
    """OpenAI knows no ``cancelled``: a request cut short by its client ended like a stop."""
    return "stop" if reason == "cancelled" else reason


class _Choice(Protocol):
    last: Delta | None


def usage(choices: Sequence[_Choice], n: int) -> UsageInfo:
    """Usage of a request from the last delta of each of its finished choices (``n`` per prompt)."""
    finished = [c.last for c in choices if c.last is not None]
    prompt = sum(d.prompt_tokens for d in finished) // n  # each prompt counted once, not once per choice
    completion = sum(d.completion_tokens for d in finished)
    return UsageInfo(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        prompt_tokens_details=PromptTokensDetails(
            cached_tokens=max((d.cached_tokens for d in finished), default=0)
        ),
    )


class CompletionChoiceAccumulator:
    """A completions choice: its text (after the echoed prompt) and legacy ``logprobs`` object."""

    def __init__(self, prompt: str, *, echo: bool, logprobs: bool) -> None:
        self.prompt, self.echo = prompt, echo
        self.text = ""
        self.logprobs = CompletionLogprobs() if logprobs else None
        self.last: Delta | None = None  # the delta that finished the choice
        self._offset = len(prompt) if echo else 0  # of the next token in the choice's text
        self._started = False

    def add(self, delta: Delta) -> tuple[str, CompletionLogprobs | None]:
        """The text and logprobs ``delta`` adds (on the first one, the echoed prompt's too)."""
        text, added = "", None
        if not self._started:
            self._started = True
            text, added = self._echo(delta)
        if self.logprobs is not None and delta.logprobs:
            part = self._logprobs(delta.logprobs)
            added = part if added is None else _joined(added, part)
        text += delta.text
        self.text += text
        if added is not None and self.logprobs is not None:
            self.logprobs.extend(added)
        if delta.finish_reason:
            self.last = delta
        return text, added

    def _echo(self, first: Delta) -> tuple[str, CompletionLogprobs | None]:
        if not self.echo:
            return "", None
        if self.logprobs is None or first.prompt_logprobs is None:
            return self.prompt, None
        self._offset = 0  # prompt tokens count from the start of the text...
        added = self._logprobs(first.prompt_logprobs, first_token=first.prompt_first_token or "")
        self._offset = len(self.prompt)  # ...and generated ones from the end of the prompt
        return self.prompt, added

    def _logprobs(self, logprobs: Sequence[TokenLogprob | None], first_token: str = "") -> CompletionLogprobs:
        part = CompletionLogprobs()
        for t in logprobs:  # None: the first prompt token, which has no logprob
            token = t.token if t is not None else first_token
            part.tokens.append(token)
            part.token_logprobs.append(t.logprob if t is not None else None)
            part.top_logprobs.append(dict(t.top) if t is not None else None)
            part.text_offset.append(self._offset)
            self._offset += len(token)
        return part


def _joined(a: CompletionLogprobs, b: CompletionLogprobs) -> CompletionLogprobs:
    out = a.model_copy(deep=True)
    out.extend(b)
    return out


class ChatChoiceAccumulator:
    """A chat choice: its text and logprobs; with tools offered, text that may be a tool call is held
    back from the stream until the answer ends (``core.tools.ToolStream``)."""

    def __init__(self, tool_names: set[str]) -> None:
        self.tool_names = tool_names
        self.text = ""
        self.logprobs: list[TokenLogprob] = []
        self.last: Delta | None = None  # the delta that finished the choice
        self._tool_stream = ToolStream(tool_names) if tool_names else None

    def add(self, delta: Delta) -> str:
        """The content ``delta`` adds that may be streamed now."""
        self.text += delta.text
        self.logprobs += delta.logprobs
        if delta.finish_reason:
            self.last = delta
        return self._tool_stream.feed(delta.text) if self._tool_stream else delta.text

    def streamed_tail(self) -> tuple[str, list[ToolCall]]:
        """Once finished, in a stream: the content held back and not a call, and the tool calls."""
        return self._tool_stream.finish() if self._tool_stream else ("", [])

    def whole(self) -> tuple[str, list[ToolCall]]:
        """Once finished, in a whole answer: the content and the tool calls, parsed from all the text."""
        return parse_tool_calls(self.text, self.tool_names) if self.tool_names else (self.text, [])


def chat_logprobs(logprobs: Sequence[TokenLogprob]) -> ChatLogprobs:
    return ChatLogprobs(
        content=[
            ChatTokenLogprob(
                token=t.token,
                logprob=t.logprob,
                bytes=list(t.token.encode()),
                top_logprobs=[TopLogprob(token=a, logprob=v, bytes=list(a.encode())) for a, v in t.top],
            )
            for t in logprobs
        ]
    )
