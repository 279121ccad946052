"""Finetuning data files: JSONL in one of the formats of ``formats.py``, validated record by record.

The format is given or detected from the first record; every record must then be of that format.
Errors name the line (1-based) and the reason, so ``puyu finetune check-data`` points at the fix.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from services.finetuner.core.formats import (
    FORMATS,
    Conversation,
    PreferenceRecord,
    Record,
    TextRecord,
    detect_format,
    parse_record,
)
from services.finetuner.core.refusals import DataError

# Which record shapes each method can learn from.
_METHOD_SHAPES: dict[str, tuple[type, ...]] = {
    "lora": (Conversation, TextRecord),
    "qlora": (Conversation, TextRecord),
    "full": (Conversation, TextRecord),
    "dpo": (PreferenceRecord,),
}


@dataclass
class Dataset:
    format: str
    records: list[Record]


def _reason(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def _lines(path: Path) -> Iterator[tuple[int, Any, str | None]]:
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line), None
            except json.JSONDecodeError as exc:
                yield lineno, None, f"line {lineno}: invalid JSON: {exc.msg} (column {exc.colno})"


def _scan(path: Path, fmt: str) -> tuple[str, list[Record], list[str]]:
    if fmt != "auto" and fmt not in FORMATS:
        return fmt, [], [f"unknown data format {fmt!r} (known: auto, {', '.join(FORMATS)})"]
    records: list[Record] = []
    errors: list[str] = []
    for lineno, obj, err in _lines(path):
        if err:
            errors.append(err)
            continue
        if fmt == "auto":
            detected = detect_format(obj)
            if detected is None:
                keys = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
                errors.append(
                    f"line {lineno}: unrecognised record {keys}: expected one of the keys "
                    "messages (openai), instruction (alpaca), conversation (xtuner), text, "
                    "chosen/rejected (preference)"
                )
                continue
            fmt = detected
        try:
            records.append(parse_record(obj, fmt))
        except ValidationError as exc:
            errors.append(f"line {lineno}: {fmt} record: {_reason(exc)}")
        except ValueError as exc:
            errors.append(f"line {lineno}: {fmt} record: {exc}")
    return fmt, records, errors


def _inspect(path: Path, data_format: str, method: str | None) -> tuple[Dataset, list[str]]:
    """The file's records and every problem of it, read once."""
    if not path.is_file():
        return Dataset(data_format, []), [f"{path}: no such file"]
    try:
        fmt, records, errors = _scan(path, data_format)
    except (OSError, UnicodeDecodeError) as exc:
        return Dataset(data_format, []), [f"{path}: unreadable: {exc}"]
    if not records and not errors:
        errors.append(f"{path}: no records")
    if method is not None and records and not errors:
        shapes = _METHOD_SHAPES.get(method, ())
        if not isinstance(records[0], shapes):
            need = "preference pairs" if method == "dpo" else "chat or text records"
            errors.append(f"{path}: method {method!r} needs {need}, the file holds {fmt} records")
    return Dataset(fmt, records), errors


def check_data(path: str | Path, data_format: str = "auto", method: str | None = None) -> list[str]:
    """Every problem of the file as 'line N: reason' strings; empty when the file is usable."""
    return _inspect(Path(path), data_format, method)[1]


def load_dataset(path: str | Path, data_format: str = "auto", method: str | None = None) -> Dataset:
    """All records of the file; raises DataError listing every bad line (no silent skipping)."""
    path = Path(path)
    dataset, errors = _inspect(path, data_format, method)
    if errors:
        raise DataError(path, errors)
    return dataset


def dataset_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
