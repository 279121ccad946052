"""The documents of a dataset, read from its manifest (see ``contracts.datasets``), and their passages.

Each shard is a JSON-lines file (gzip/zstd by extension) or a Parquet file whose records carry ``id``
and ``text``; a record without an id is named by its shard and line.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass

import fsspec

from contracts.datasets import DatasetError, shard_uris
from services.agent_runtime.core.errors import CorpusError
from shared.parquet_records import iter_parquet
from shared.shards import shard_format

_SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s+|\n+")
MAX_PASSAGE_CHARS = 600


@dataclass(frozen=True)
class Document:
    doc_id: str
    text: str


def read_documents(manifest_uri: str) -> Iterator[Document]:
    """Every document of the dataset a manifest describes."""
    try:
        uris = shard_uris(manifest_uri)
    except DatasetError as exc:
        raise CorpusError(str(exc)) from None
    for uri in uris:
        if shard_format(uri) == "parquet":
            yield from _parquet_documents(uri)
            continue
        try:
            with fsspec.open(uri, "rt", encoding="utf-8", compression="infer") as f:
                for n, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except ValueError:
                        raise CorpusError(f"{uri}: line {n} is not JSON") from None
                    text = record.get("text") if isinstance(record, dict) else None
                    if not isinstance(text, str):
                        raise CorpusError(f"{uri}: line {n} has no 'text'")
                    yield Document(str(record.get("id") or f"{uri}#{n}"), text)
        except FileNotFoundError:
            raise CorpusError(f"shard not found: {uri}") from None
        except OSError as exc:
            raise CorpusError(f"cannot read shard {uri}: {exc}") from None


def _parquet_documents(uri: str) -> Iterator[Document]:
    try:
        with fsspec.open(uri, "rb") as f:
            for n, record in enumerate(iter_parquet(f), 1):
                text = record.get("text")
                if not isinstance(text, str):
                    raise CorpusError(f"{uri}: row {n} has no 'text'")
                yield Document(str(record.get("id") or f"{uri}#{n}"), text)
    except CorpusError:
        raise
    except FileNotFoundError:
        raise CorpusError(f"shard not found: {uri}") from None
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise CorpusError(f"cannot read Parquet shard {uri}: {exc}") from None


def split_passages(text: str, sentences_per_passage: int = 1) -> list[str]:
    sentences = [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]
    passages = []
    for i in range(0, len(sentences), sentences_per_passage):
        passage = " ".join(sentences[i : i + sentences_per_passage])
        passages.append(passage[:MAX_PASSAGE_CHARS])
    return passages
