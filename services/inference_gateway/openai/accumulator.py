"""One choice's output as its deltas arrive, shared by streamed and whole answers.

``add`` takes the next delta and returns what it adds to the choice (what a stream sends now); the
accumulator keeps the totals (what a whole answer sends at the end), so the two never disagree.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from services.inference_gateway.core.engine import Delta, TokenLogprob
from services.inference_gateway.core.reasoning import ReasoningStream, split_reasoning
from services.inference_gateway.core.tools import (
    ToolCall,
    ToolCallDelta,
    ToolParser,
    ToolPlan,
    parse_tool_calls,
)
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
    """A completions choice: its text (after the echoed prompt) and legacy ``logprobs`` object.

    ``prompt``: the prompt's text as the client gave it; None for token ids, whose text the engine
    decodes (``Delta.prompt_text``) when echoed.
    """

    def __init__(self, prompt: str | None, *, echo: bool, logprobs: bool) -> None:
        self.prompt, self.echo = prompt, echo
        self.text = ""
        self.logprobs = CompletionLogprobs() if logprobs else None
        self.last: Delta | None = None  # the delta that finished the choice
        self._offset = 0  # of the next token in the choice's text
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
        prompt = self.prompt if self.prompt is not None else _prompt_text(first)
        added = None
        if self.logprobs is not None and first.prompt_logprobs is not None:
            # prompt tokens count from the start of the text, generated ones from the end of the prompt
            added = self._logprobs(first.prompt_logprobs, first_token=first.prompt_first_token or "")
        self._offset = len(prompt)
        return prompt, added

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


def _prompt_text(first: Delta) -> str:
    """The text of a prompt given as token ids: decoded by the engine; from a worker that does not send
    it, the prompt tokens' own texts joined."""
    if first.prompt_text is not None:
        return first.prompt_text
    tokens = [t.token for t in first.prompt_logprobs or () if t is not None]
    return (first.prompt_first_token or "") + "".join(tokens)


def _joined(a: CompletionLogprobs, b: CompletionLogprobs) -> CompletionLogprobs:
    out = a.model_copy(deep=True)
    out.extend(b)
    return out


class ChatChoiceAccumulator:
    """A chat choice: its text and logprobs; its reasoning (``<think>``) apart from its content
    (``core.reasoning``); with tools, its calls (``core.tools``): in a stream, content up to a call and
    the call's pieces as they are read; in a whole answer, parsed from all the text by the same parser."""

    def __init__(self, plan: ToolPlan, *, stream: bool) -> None:
        self.plan = plan
        self.text = ""
        self.logprobs: list[TokenLogprob] = []
        self.last: Delta | None = None  # the delta that finished the choice
        self.called = False  # a call was streamed
        self._reasoning = ReasoningStream()
        self._tools = ToolParser(plan) if plan.reads_calls and stream else None

    def add(self, delta: Delta) -> tuple[str, str, list[ToolCallDelta]]:
        """The reasoning, the content and the pieces of calls ``delta`` adds that may be streamed now."""
        self.text += delta.text
        self.logprobs += delta.logprobs
        if delta.finish_reason:
            self.last = delta
        reasoning, content = self._reasoning.feed(delta.text)
        if self._tools is None:
            return reasoning, content, []
        content, calls = self._tools.feed(content)
        self.called = self.called or bool(calls)
        return reasoning, content, calls

    def streamed_tail(self) -> tuple[str, str, list[ToolCallDelta]]:
        """Once finished, in a stream: the reasoning, the content held back, the last pieces of calls."""
        reasoning, content = self._reasoning.finish()
        if self._tools is None:
            return reasoning, content, []
        content, calls = self._tools.feed(content)
        held_back, more = self._tools.finish()
        self.called = self.called or bool(calls or more)
        return reasoning, content + held_back, calls + more

    def whole(self) -> tuple[str | None, str, list[ToolCall]]:
        """Once finished, in a whole answer: the reasoning (None without), the content and the tool
        calls, parsed from all the text."""
        reasoning, content = split_reasoning(self.text)
        if self.plan.reads_calls:
            content, calls = parse_tool_calls(content, self.plan)
            return reasoning, content, calls
        return reasoning, content, []

    def finish_reason(self, calls: bool) -> str | None:
        """As vLLM (after OpenAI): ``tool_calls`` when a call ended the answer, unless tool_choice named the
        function (then ``stop``); a call cut short keeps ``length``."""
        reason = finish_reason(self.last.finish_reason if self.last else None)
        return "tool_calls" if calls and reason == "stop" and self.plan.named is None else reason


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
