"""What a request asks the model to continue: text, token ids, or chat messages (with tools).

Kept as given until a backend takes it: a local engine tokenizes it (rendering chat with the
model's template), a remote worker receives it as is and does the same with its own tokenizer.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from services.inference_gateway.core.sampling import InvalidRequest

if TYPE_CHECKING:
    from services.inference_gateway.core.engine_api import ServingEngine


@dataclass(frozen=True)
class Prompt:
    text: str | None = None
    ids: tuple[int, ...] | None = None
    messages: list[dict[str, Any]] | None = field(default=None, hash=False)
    tools: list[dict[str, Any]] | None = field(default=None, hash=False)

    def __post_init__(self) -> None:
        given = sum(x is not None for x in (self.text, self.ids, self.messages))
        if given != 1:
            raise ValueError("a prompt is exactly one of text, token ids or chat messages")

    def token_ids(self, engine: ServingEngine) -> list[int]:
        if self.ids is not None:
            return list(self.ids)
        if self.messages is not None:
            return engine.render_chat(self.messages, self.tools)
        assert self.text is not None
        return engine.encode(self.text)

    def chat_json(self) -> str:
        return json.dumps({"messages": self.messages, "tools": self.tools})

    @classmethod
    def from_chat_json(cls, raw: str) -> Prompt:
        """Parse ``{"messages": [...], "tools": [...]}``; ValueError naming what is wrong."""
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(f"chat_json is not JSON: {exc}") from None
        messages = obj.get("messages") if isinstance(obj, dict) else None
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            raise ValueError("chat_json needs a non-empty list of message objects under 'messages'")
        tools = obj.get("tools")
        if tools is not None and not isinstance(tools, list):
            raise ValueError("chat_json 'tools' must be a list")
        return cls(messages=messages, tools=tools)


def check_prompt_ids(ids: Sequence[int], *, vocab_size: int) -> None:
    """InvalidRequest when the prompt is empty or holds an id the model has no embedding for (as vLLM:
    the forward would fail, and with it every request batched in the same step)."""
    if not ids:
        raise InvalidRequest("the prompt is empty")
    bad = next((i for i in ids if not 0 <= i < vocab_size), None)
    if bad is not None:
        raise InvalidRequest(f"Token id {bad} is out of vocabulary (the model has {vocab_size} token ids)")


def encode_text(tokenizer: Any, text: str) -> list[int]:
    """``text``'s token ids as the model's tokenizer makes them (its special tokens included)."""
    return list(tokenizer(text)["input_ids"])


def render_chat(
    tokenizer: Any, name: str, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
) -> list[int]:
    """The token ids of ``messages`` rendered by the model's chat template, ready for the answer;
    InvalidRequest when the model has no template or the template rejects the messages."""
    if not getattr(tokenizer, "chat_template", None):
        raise InvalidRequest(f"model {name!r} has no chat template: use /v1/completions")
    try:
        text = tokenizer.apply_chat_template(
            messages, tools=tools or None, add_generation_prompt=True, tokenize=False
        )
    except Exception as exc:  # a template that rejects these messages (roles, order) says why
        raise InvalidRequest(f"the chat template of {name!r} rejected the messages: {exc}") from None
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])
