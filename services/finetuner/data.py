"""Chat finetuning data: OpenAI-messages JSONL, validated record by record.

One line is one conversation: ``{"messages": [{"role": "system"|"user"|"assistant", "content": "..."}]}``.
Errors name the line (1-based) and the reason, so ``puyu finetune check-data`` can point at the fix.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class Message(BaseModel):
    # Extra keys (name, tool_calls, weight...) are tolerated: other tools write them.
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant"]
    content: str = Field(min_length=1)


class ChatRecord(BaseModel):
    model_config = ConfigDict(extra="ignore")

    messages: list[Message] = Field(min_length=1)

    @model_validator(mode="after")
    def _shape(self) -> ChatRecord:
        roles = [m.role for m in self.messages]
        if "assistant" not in roles:
            raise ValueError("no assistant message: nothing to learn from")
        if "system" in roles[1:]:
            raise ValueError("a system message may only come first")
        return self

    def as_dicts(self) -> list[dict[str, str]]:
        return [{"role": m.role, "content": m.content} for m in self.messages]


class DataError(ValueError):
    """The data file is unusable; ``errors`` lists every problem found."""

    def __init__(self, path: Path, errors: list[str]) -> None:
        self.errors = errors
        shown = "; ".join(errors[:5]) + (f" (+{len(errors) - 5} more)" if len(errors) > 5 else "")
        super().__init__(f"{path}: {shown}")


def _reason(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def _parse(path: Path) -> Iterator[tuple[int, ChatRecord | None, str | None]]:
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                yield lineno, None, f"line {lineno}: invalid JSON: {exc.msg} (column {exc.colno})"
                continue
            try:
                yield lineno, ChatRecord.model_validate(obj), None
            except ValidationError as exc:
                yield lineno, None, f"line {lineno}: {_reason(exc)}"


def check_data(path: str | Path) -> list[str]:
    """Every problem of the file as 'line N: reason' strings; empty when the file is usable."""
    path = Path(path)
    if not path.is_file():
        return [f"{path}: no such file"]
    try:
        results = list(_parse(path))
    except (OSError, UnicodeDecodeError) as exc:
        return [f"{path}: unreadable: {exc}"]
    errors = [err for _, _, err in results if err]
    if not results:
        errors.append(f"{path}: no records")
    return errors


def load_records(path: str | Path) -> list[ChatRecord]:
    """All records of the file; raises DataError listing every bad line (no silent skipping)."""
    path = Path(path)
    errors = check_data(path)
    if errors:
        raise DataError(path, errors)
    return [rec for _, rec, _ in _parse(path) if rec is not None]


def dataset_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
