"""Reading input shards: JSON lines (plain, gzip, zstd) and Parquet, every record with a string text.

JSON lines are read as raw lines in large chunks, so the rewrite can copy a kept line as it is
without parsing it; Parquet shards are read as records (through ``shared.parquet_records``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from shared.errors import Refusal
from shared.parquet_records import iter_parquet
from shared.shards import open_shard, shard_format

SHARD_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".parquet")
_CHUNK = 1 << 20


class DedupInputError(Refusal):
    """The input can never be deduplicated: missing folder, unreadable manifest or shard, no documents."""


def is_parquet(shard: Path) -> bool:
    return shard_format(shard) == "parquet"


def raw_lines(shard: Path) -> Iterator[tuple[int, bytes]]:
    """(line number, line) of every non-blank line of a JSON-lines shard, newline-terminated."""
    lineno = 0
    try:
        with open_shard(shard) as f:
            rest = b""
            while chunk := f.read(_CHUNK):
                lines = (rest + chunk).split(b"\n")
                rest = lines.pop()
                for line in lines:
                    lineno += 1
                    if line.strip():
                        yield lineno, line + b"\n"
            if rest.strip():
                yield lineno + 1, rest + b"\n"
    except Exception as exc:  # gzip/zstd errors all mean the same: a damaged shard
        raise DedupInputError(f"{shard}: unreadable shard ({type(exc).__name__}: {exc})") from exc


try:  # orjson parses records ~3x faster; the standard library is the fallback
    from orjson import loads as _loads
except ImportError:  # pragma: no cover - orjson is optional
    _loads = json.loads  # type: ignore[assignment]


def parse(shard: Path, lineno: int, line: bytes) -> dict[str, Any]:
    try:
        rec = _loads(line)
    except ValueError as exc:  # JSONDecodeError (both libraries) and UnicodeDecodeError
        raise DedupInputError(f"{shard}:{lineno}: not a JSON record ({exc})") from exc
    if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
        raise DedupInputError(f"{shard}:{lineno}: record without a string 'text'")
    return rec


def parquet_records(shard: Path) -> Iterator[dict[str, Any]]:
    try:
        for row, rec in enumerate(iter_parquet(shard), 1):
            if not isinstance(rec.get("text"), str):
                raise DedupInputError(f"{shard}: row {row}: record without a string 'text'")
            yield rec
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise DedupInputError(f"{shard}: unreadable Parquet shard ({type(exc).__name__}: {exc})") from exc


def records(shard: Path) -> Iterator[dict[str, Any]]:
    """Every record of a shard, in order; ``DedupInputError`` names the shard and line or row."""
    if is_parquet(shard):
        yield from parquet_records(shard)
        return
    for lineno, line in raw_lines(shard):
        yield parse(shard, lineno, line)
