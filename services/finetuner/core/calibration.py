"""Calibration text for AWQ and GPTQ: read from a puyu dataset or a text file, cut into token windows.

A source is a dataset (a ``manifest.json`` URI or path, or the folder holding one: what corpus-ingest
and dedup write, see ``contracts.datasets``), a JSON-lines or Parquet file of ``text`` records, or a
``.txt`` file (one passage per line). Texts are tokenised, joined with the end-of-sequence token and
cut into ``samples`` windows of ``seq_len`` tokens, as AutoAWQ's ``get_calib_dataset`` does. Reading
stops once those windows are full, so a corpus of any size costs one window budget of memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from contracts.datasets import DatasetError, shard_uris
from services.finetuner.core.refusals import InvalidInput
from shared.artifacts import ArtifactStore, local_path
from shared.read_roots import ReadRoots
from shared.shards import ShardReadError, iter_records

MAX_LINE_CHARS = 1 << 20  # a text file's line is read at most this long: no line can exhaust memory
TEXT_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".parquet")


def calibration_windows(
    source: str,
    tokenizer: Any,
    *,
    samples: int,
    seq_len: int,
    store: ArtifactStore | None = None,
    read_roots: ReadRoots | None = None,
) -> list[list[int]]:
    """Up to ``samples`` windows of ``seq_len`` token ids from ``source`` (the last may be shorter).

    ``read_roots``: where a service may read; every shard a manifest names is checked against them
    too (a manifest inside a root must not lead the job to a file outside). Unreadable or empty
    sources are refused (``InvalidInput``) naming the source.
    """
    budget = samples * seq_len
    separator = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    ids: list[int] = []
    for text in _texts(source, store, read_roots):
        ids += list(tokenizer(text, add_special_tokens=False)["input_ids"]) + separator
        if len(ids) >= budget:
            break
    ids = ids[:budget]
    if not ids:
        raise InvalidInput(f"calibration source {source} holds no text")
    return [ids[start : start + seq_len] for start in range(0, len(ids), seq_len)]


def _texts(source: str, store: ArtifactStore | None, roots: ReadRoots | None) -> Iterator[str]:
    if roots is not None:
        roots.require(source, "calibration data")
    path = local_path(source)
    if path is not None and path.is_dir():
        if not (path / "manifest.json").is_file():
            raise InvalidInput(f"calibration folder {source} holds no manifest.json (not a puyu dataset)")
        yield from _manifest_texts((path / "manifest.json").resolve().as_uri(), store, roots)
    elif source.endswith("manifest.json"):
        yield from _manifest_texts(path.resolve().as_uri() if path is not None else source, store, roots)
    else:
        yield from _file_texts(_fetch(source, store))


def _manifest_texts(manifest_uri: str, store: ArtifactStore | None, roots: ReadRoots | None) -> Iterator[str]:
    try:
        uris = shard_uris(manifest_uri)
    except DatasetError as exc:
        raise InvalidInput(str(exc)) from None
    for uri in uris:
        if roots is not None:
            roots.require(uri, "dataset shard")
        yield from _file_texts(_fetch(uri, store))


def _fetch(uri: str, store: ArtifactStore | None) -> Path:
    path = local_path(uri)
    if path is not None:
        if not path.is_file():
            raise InvalidInput(f"calibration file not found: {uri}")
        return path
    if store is None:
        raise InvalidInput(f"calibration source {uri} is remote: give a local path")
    try:
        return store.fetch(uri)
    except FileNotFoundError as exc:
        raise InvalidInput(f"calibration file not found: {uri}") from exc


def _file_texts(path: Path) -> Iterator[str]:
    if path.name.endswith(".txt"):
        with path.open(encoding="utf-8", errors="replace") as f:
            while line := f.readline(MAX_LINE_CHARS):
                if line.strip():
                    yield line.strip()
        return
    if not path.name.endswith(TEXT_SUFFIXES):
        raise InvalidInput(
            f"calibration file {path} is neither text (.txt) nor records ({', '.join(TEXT_SUFFIXES)})"
        )
    try:
        for number, record in enumerate(iter_records(path), 1):
            text = record.get("text")
            if not isinstance(text, str):
                raise InvalidInput(f"{path}: record {number} has no 'text' string")
            if text.strip():
                yield text
    except ShardReadError as exc:
        raise InvalidInput(str(exc)) from None
