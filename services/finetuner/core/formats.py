"""The record formats a finetuning file may use, each normalised to one of three shapes.

- ``openai``: ``{"messages": [{"role", "content", "weight"?: 0|1, "loss"?: bool}]}`` (multi-turn,
  optional leading system prompt; ``weight``/``loss`` switch the loss off for one assistant turn);
- ``alpaca``: ``{"instruction", "input"?, "output", "system"?}``;
- ``xtuner``: ``{"conversation": [{"system"?, "input", "output"}, ...]}`` (XTuner's format);
- ``text``: ``{"text": "..."}`` (continued pretraining: loss on every token);
- ``preference``: ``{"prompt": str | messages, "chosen": str | messages, "rejected": str | messages}``.

Pydantic does the per-field checks, so a bad record's error names the field and the reason.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Role = Literal["system", "user", "assistant"]
FORMATS = ("openai", "alpaca", "xtuner", "text", "preference")


class _Lenient(BaseModel):
    # Extra keys (name, id, tool_calls...) are tolerated: other tools write them.
    model_config = ConfigDict(extra="ignore")


class Message(_Lenient):
    role: Role
    content: str = Field(min_length=1)
    weight: Literal[0, 1] | None = Field(default=None, description="OpenAI's per-turn loss switch.")
    loss: bool | None = Field(default=None, description="XTuner/LLaMA-Factory style per-turn loss flag.")

    @property
    def trained(self) -> bool:
        """Whether this turn's tokens carry loss (assistant turns only, unless switched off)."""
        return self.role == "assistant" and self.weight != 0 and self.loss is not False


def _check_turns(messages: list[Message]) -> None:
    roles = [m.role for m in messages]
    if "system" in roles[1:]:
        raise ValueError("a system message may only come first")
    if not any(m.trained for m in messages):
        raise ValueError("no assistant message with loss: nothing to learn from")


class Conversation(_Lenient):
    """The common shape of every supervised format."""

    messages: list[Message] = Field(min_length=1)

    @model_validator(mode="after")
    def _shape(self) -> Conversation:
        _check_turns(self.messages)
        return self

    def as_dicts(self) -> list[dict[str, Any]]:
        return [{"role": m.role, "content": m.content, "train": m.trained} for m in self.messages]


class AlpacaRecord(_Lenient):
    instruction: str = Field(min_length=1)
    input: str = ""
    output: str = Field(min_length=1)
    system: str = ""

    def to_conversation(self) -> Conversation:
        prompt = f"{self.instruction}\n\n{self.input}" if self.input.strip() else self.instruction
        msgs = [Message(role="system", content=self.system)] if self.system.strip() else []
        msgs += [Message(role="user", content=prompt), Message(role="assistant", content=self.output)]
        return Conversation(messages=msgs)


class XTunerTurn(_Lenient):
    system: str = ""
    input: str = Field(min_length=1)
    output: str = Field(min_length=1)
    output_with_loss: bool = True


class XTunerRecord(_Lenient):
    conversation: list[XTunerTurn] = Field(min_length=1)

    @model_validator(mode="after")
    def _system_first(self) -> XTunerRecord:
        if any(t.system.strip() for t in self.conversation[1:]):
            raise ValueError("conversation: a system prompt may only be in the first turn")
        return self

    def to_conversation(self) -> Conversation:
        msgs: list[Message] = []
        for turn in self.conversation:
            if turn.system.strip():
                msgs.append(Message(role="system", content=turn.system))
            msgs.append(Message(role="user", content=turn.input))
            msgs.append(Message(role="assistant", content=turn.output, loss=turn.output_with_loss))
        return Conversation(messages=msgs)


class TextRecord(_Lenient):
    text: str = Field(min_length=1)


def _as_messages(value: str | list[Message], default_role: Role) -> list[Message]:
    return [Message(role=default_role, content=value)] if isinstance(value, str) else value


class PreferenceRecord(_Lenient):
    """A prompt and two answers; the model learns to prefer ``chosen`` over ``rejected``."""

    prompt: str | list[Message]
    chosen: str | list[Message]
    rejected: str | list[Message]

    @model_validator(mode="after")
    def _shape(self) -> PreferenceRecord:
        prompt = _as_messages(self.prompt, "user")
        if not prompt or prompt[-1].role != "user":
            raise ValueError("prompt must be a string or messages ending with a user turn")
        if "system" in [m.role for m in prompt[1:]]:
            raise ValueError("prompt: a system message may only come first")
        for name in ("chosen", "rejected"):
            answer = _as_messages(getattr(self, name), "assistant")
            if len(answer) != 1 or answer[0].role != "assistant":
                raise ValueError(f"{name} must be a string or exactly one assistant message")
        if self.answer("chosen") == self.answer("rejected"):
            raise ValueError("chosen and rejected are the same answer: nothing to prefer")
        return self

    def prompt_dicts(self) -> list[dict[str, Any]]:
        return [
            {"role": m.role, "content": m.content, "train": False} for m in _as_messages(self.prompt, "user")
        ]

    def answer(self, which: Literal["chosen", "rejected"]) -> str:
        return _as_messages(getattr(self, which), "assistant")[0].content


Record = Conversation | TextRecord | PreferenceRecord


def detect_format(obj: Any) -> str | None:
    """The format a JSON record looks like, from its keys; None when it looks like none."""
    if not isinstance(obj, dict):
        return None
    if {"chosen", "rejected"} & obj.keys():
        return "preference"
    for key, name in (("messages", "openai"), ("conversation", "xtuner"), ("instruction", "alpaca")):
        if key in obj:
            return name
    if "text" in obj:
        return "text"
    return None


def parse_record(obj: Any, fmt: str) -> Record:
    """Validate one JSON record as ``fmt``; raises pydantic's ValidationError or ValueError."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    if fmt == "openai":
        return Conversation.model_validate(obj)
    if fmt == "alpaca":
        return AlpacaRecord.model_validate(obj).to_conversation()
    if fmt == "xtuner":
        return XTunerRecord.model_validate(obj).to_conversation()
    if fmt == "text":
        return TextRecord.model_validate(obj)
    if fmt == "preference":
        return PreferenceRecord.model_validate(obj)
    raise ValueError(f"unknown data format {fmt!r} (known: {', '.join(FORMATS)})")
