"""Reasoning in model output (``<think>...</think>``) apart from the answer, as vLLM's
``reasoning_content``, for whole answers and for streams.

Detected per answer, so per model without a setting: an answer that opens with ``<think>`` (Qwen3,
DeepSeek-R1 distills, other models whose chat template or training emits the tag) has its thinking
returned apart and the rest as the content; an answer without the tag is all content, so models that
never think are unaffected. An answer cut short inside the block is all reasoning. A template that
opens the block itself in the generation prompt (the model's answer then starts inside it, with no
``<think>`` of its own) is not detected: its thinking stays in the content.
"""

from __future__ import annotations

OPEN, CLOSE = "<think>", "</think>"


def split_reasoning(text: str) -> tuple[str | None, str]:
    """(reasoning, content); reasoning is None when the answer holds none."""
    stripped = text.lstrip()
    if not stripped.startswith(OPEN):
        return None, text
    body = stripped[len(OPEN) :]
    end = body.find(CLOSE)
    if end < 0:
        return body, ""
    return body[:end], body[end + len(CLOSE) :].lstrip()


class ReasoningStream:
    """Feeds streamed text; returns (reasoning, content) pieces as they are decided, the same split
    as ``split_reasoning`` of the whole text."""

    def __init__(self) -> None:
        self.state = "start"  # start (undecided) | reasoning | after (content after the block) | content
        self.pending = ""  # text not sent yet

    def feed(self, piece: str) -> tuple[str, str]:
        self.pending += piece
        if self.state == "start":
            head = self.pending.lstrip()
            if head.startswith(OPEN):
                self.state, self.pending = "reasoning", head[len(OPEN) :]
            elif not head or OPEN.startswith(head):
                return "", ""  # may still become the tag
            else:
                self.state = "content"
        if self.state == "reasoning":
            end = self.pending.find(CLOSE)
            if end < 0:  # hold a tail that could start the closing tag
                hold = next(
                    (
                        k
                        for k in range(min(len(CLOSE) - 1, len(self.pending)), 0, -1)
                        if self.pending.endswith(CLOSE[:k])
                    ),
                    0,
                )
                out, self.pending = (
                    self.pending[: len(self.pending) - hold],
                    self.pending[len(self.pending) - hold :],
                )
                return out, ""
            thought, self.pending = self.pending[:end], self.pending[end + len(CLOSE) :]
            self.state = "after"
            return thought, self._content()
        return "", self._content()

    def _content(self) -> str:
        if self.state == "after":  # the content after the block starts at its first non-space
            self.pending = self.pending.lstrip()
            if not self.pending:
                return ""
            self.state = "content"
        out, self.pending = self.pending, ""
        return out

    def finish(self) -> tuple[str, str]:
        """(reasoning, content) not sent yet, once the answer is complete."""
        rest, self.pending = self.pending, ""
        if self.state == "reasoning":
            return rest, ""
        if self.state == "after":
            return "", rest.lstrip()
        return "", rest
