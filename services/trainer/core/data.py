"""Training data: read deduplicated datasets, tokenise once, pack into fixed-length sequences.

Dataset manifest (written by the dedup service), read tolerantly::

    {"shards": [{"uri": "file:///.../shard-00000.jsonl.gz", "sha256": "..."}, ...], ...}

A shard entry may also be a bare string, and its ``uri`` (or ``path``) may be relative to the
manifest's folder. Shards are JSON lines (plain, gzip or zstd) or Parquet (``shared.shards``) whose
``text`` field is a document.
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from contracts.datasets import DatasetError as ManifestError
from contracts.datasets import shard_uris
from shared.artifacts import ArtifactStore, local_path
from shared.errors import Refusal
from shared.shards import ShardReadError, iter_records, shard_format

TEXT_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".json.gz", ".parquet", ".txt")


class DatasetError(Refusal, ValueError):
    """The training data cannot be used (missing, unreadable or empty): retrying will not help."""


# ------------------------------------------------------------------------------------- reading


def _open_text(path: Path) -> IO[str]:
    raw = path.open("rb")
    head = raw.peek(4)[:4] if hasattr(raw, "peek") else b""
    if head[:2] == b"\x1f\x8b":
        return io.TextIOWrapper(gzip.GzipFile(fileobj=raw), encoding="utf-8")
    if head == b"\x28\xb5\x2f\xfd":
        import zstandard  # only the dedup extra installs it

        return io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(raw), encoding="utf-8")
    return io.TextIOWrapper(raw, encoding="utf-8")


def iter_jsonl_texts(path: Path) -> Iterator[str]:
    with _open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path}:{lineno}: not valid JSON: {exc.msg}") from exc
            text = record.get("text") if isinstance(record, dict) else None
            if isinstance(text, str) and text.strip():
                yield text


def iter_parquet_texts(path: Path) -> Iterator[str]:
    try:
        for record in iter_records(path):
            text = record.get("text")
            if isinstance(text, str) and text.strip():
                yield text
    except ShardReadError as exc:
        raise DatasetError(str(exc)) from exc


def iter_file_texts(path: Path) -> Iterator[str]:
    """Documents of one local file: JSON lines, Parquet, or a whole .txt file as one document."""
    if shard_format(path) == "parquet":
        yield from iter_parquet_texts(path)
    elif path.name.endswith(".txt"):
        text = path.read_text(encoding="utf-8", errors="replace")
        if text.strip():
            yield text.strip()
    else:
        yield from iter_jsonl_texts(path)


def iter_manifest_texts(store: ArtifactStore, manifest_uri: str) -> Iterator[str]:
    try:
        uris = shard_uris(manifest_uri)
    except ManifestError as exc:
        raise DatasetError(str(exc)) from None
    for uri in uris:
        try:
            path = store.fetch(uri)
        except FileNotFoundError as exc:
            raise DatasetError(f"dataset shard not found: {uri}") from exc
        yield from iter_file_texts(path)


def iter_source_texts(store: ArtifactStore, source: str) -> Iterator[str]:
    """Documents of a manifest URI, a manifest.json path, a folder, or a JSONL/text file."""
    lp = local_path(source)
    if lp is not None and lp.is_dir():
        if (lp / "manifest.json").exists():
            yield from iter_manifest_texts(store, (lp / "manifest.json").resolve().as_uri())
            return
        files = sorted(p for p in lp.rglob("*") if p.is_file() and p.name.endswith(TEXT_SUFFIXES))
        if not files:
            raise DatasetError(f"{source}: no .jsonl(.gz/.zst), .parquet or .txt files in this folder")
        for f in files:
            yield from iter_file_texts(f)
    elif source.endswith(".json"):
        uri = lp.resolve().as_uri() if lp is not None else source
        yield from iter_manifest_texts(store, uri)
    elif lp is not None:
        if not lp.exists():
            raise DatasetError(f"dataset file not found: {source}")
        yield from iter_file_texts(lp)
    else:
        yield from iter_file_texts(store.fetch(source))


def load_texts(store: ArtifactStore, sources: Iterable[str]) -> list[str]:
    texts: list[str] = []
    for source in sources:
        texts.extend(iter_source_texts(store, source))
    if not texts:
        raise DatasetError("the training datasets hold no documents")
    return texts


# ------------------------------------------------------------------------------------- packing


def tokenize_stream(tokenizer: Any, texts: list[str], batch_size: int = 1000) -> np.ndarray:
    """All documents as one token stream, each document followed by eos (bos comes from the tokenizer)."""
    parts = list(_token_chunks(tokenizer, texts, batch_size))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)


def _token_chunks(tokenizer: Any, texts: list[str], batch_size: int) -> Iterator[np.ndarray]:
    eos = tokenizer.eos_token_id
    backend = tokenizer.backend_tokenizer  # the Rust tokenizer: batch encoding uses every core
    for i in range(0, len(texts), batch_size):
        encs = backend.encode_batch(texts[i : i + batch_size])
        yield np.concatenate([np.asarray([*enc.ids, eos], dtype=np.int32) for enc in encs])


def tokenize_to_memmap(tokenizer: Any, texts: list[str], path: Path, batch_size: int = 1000) -> np.ndarray:
    """Tokenise once into ``path`` (int32, written in chunks, renamed when complete); map it read-only.

    Resuming (or a second pass) maps the finished file instead of tokenising again.
    """
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with tmp.open("wb") as f:
            for chunk in _token_chunks(tokenizer, texts, batch_size):
                f.write(chunk.tobytes())
        tmp.replace(path)
    return map_tokens(path)


def map_tokens(path: Path) -> np.ndarray:
    """A finished token file, memory-mapped read-only (an empty file maps to no tokens)."""
    if path.stat().st_size == 0:
        return np.zeros(0, dtype=np.int32)
    return np.memmap(path, dtype=np.int32, mode="r")


def split_documents(texts: list[str], fraction: float) -> tuple[list[str], list[str]]:
    """(train, held-out): every k-th document is held out, k = round(1 / fraction); none for tiny sets."""
    if fraction <= 0 or len(texts) < 4:
        return texts, []
    k = max(2, round(1 / fraction))
    return [t for i, t in enumerate(texts) if i % k], [t for i, t in enumerate(texts) if not i % k]


def document_positions(tokens: np.ndarray, eos_id: int) -> np.ndarray:
    """Position ids that restart after each eos: a packed document sees positions 0, 1, 2, ..."""
    idx = np.arange(len(tokens))
    starts = np.zeros(len(tokens), dtype=bool)
    starts[0] = True
    starts[1:] = tokens[:-1] == eos_id
    return idx - np.maximum.accumulate(np.where(starts, idx, 0))


@dataclass
class PackedDataset:
    """A token stream cut into ``seq_len`` sequences (concatenate-and-chunk, no padding).

    The stream is treated as circular and each epoch starts at a seeded offset, so a fact does not
    always sit at the same position of a sequence; only a stream shorter than one sequence pads.
    """

    stream: np.ndarray
    seq_len: int
    pad_id: int
    seed: int = 0

    def __post_init__(self) -> None:
        if len(self.stream) == 0:
            raise DatasetError("the training datasets tokenise to no tokens")

    def __len__(self) -> int:  # sequences per epoch
        return max(1, len(self.stream) // self.seq_len)

    def epoch_offset(self, epoch: int) -> int:
        if epoch == 0 or len(self.stream) <= self.seq_len:
            return 0
        return int(np.random.default_rng([self.seed, epoch, 1]).integers(len(self.stream)))

    def sequence(self, epoch: int, index: int) -> tuple[np.ndarray, int]:
        """(tokens of length seq_len, number of real tokens) of sequence ``index`` in ``epoch``."""
        n, L = len(self.stream), self.seq_len
        if n < L:
            out = np.full(L, self.pad_id, dtype=np.int32)
            out[:n] = self.stream
            return out, n
        start = (self.epoch_offset(epoch) + index * L) % n
        if start + L <= n:
            return np.asarray(self.stream[start : start + L]), L
        return np.asarray(self.stream[(start + np.arange(L)) % n]), L

    def non_padding_fraction(self) -> float:
        real = sum(self.sequence(0, i)[1] for i in range(len(self)))
        return real / (len(self) * self.seq_len)


def make_batch(rows: list[np.ndarray], counts: list[int], eos_id: int | None) -> dict[str, torch.Tensor]:
    """input_ids, labels (-100 on padding) and, with ``eos_id``, per-document position ids."""
    input_ids = torch.from_numpy(np.stack(rows).astype(np.int64))
    labels = input_ids.clone()
    for r, real in enumerate(counts):
        labels[r, real:] = -100
    batch = {"input_ids": input_ids, "labels": labels}
    if eos_id is not None:
        batch["position_ids"] = torch.from_numpy(np.stack([document_positions(r, eos_id) for r in rows]))
    return batch


class SeededSampler:
    """Deterministic batches: a seeded permutation per epoch; the whole state is ``samples_seen``.

    With ``world_size`` ranks each call consumes ``batch_size * world_size`` sequences of the
    global order and returns this rank's share, so every rank count sees the same global batches.
    """

    def __init__(
        self,
        dataset: PackedDataset,
        batch_size: int,
        seed: int,
        samples_seen: int = 0,
        *,
        eos_id: int | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.samples_seen, self.eos_id = samples_seen, eos_id
        self.rank, self.world_size = rank, world_size
        self._perm_epoch, self._perm = -1, np.zeros(0, dtype=np.int64)

    def _order(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.dataset))
            self._perm_epoch = epoch
        return self._perm

    def next_batch(self) -> dict[str, torch.Tensor]:
        rows, counts = [], []
        first = self.samples_seen + self.rank * self.batch_size
        for i in range(first, first + self.batch_size):
            epoch, pos = divmod(i, len(self.dataset))
            tokens, real = self.dataset.sequence(epoch, int(self._order(epoch)[pos]))
            rows.append(tokens)
            counts.append(real)
        self.samples_seen += self.batch_size * self.world_size
        return make_batch(rows, counts, self.eos_id)

    def state_dict(self) -> dict[str, int]:
        return {"samples_seen": self.samples_seen, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.samples_seen = int(state["samples_seen"])
