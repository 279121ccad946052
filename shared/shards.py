"""Deterministic JSONL shard writer (gzip with mtime 0, or zstd): the same documents give byte-identical shards."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
from pathlib import Path
from typing import IO, Any

FORMATS = ("jsonl.gz", "jsonl.zst")


def _open(path: Path, fmt: str) -> tuple[IO[bytes], IO[bytes]]:
    """(compressed writer, raw file): closing the writer first flushes it into the raw file."""
    raw = open(path, "wb")
    if fmt == "jsonl.zst":
        import zstandard

        out: IO[bytes] = zstandard.ZstdCompressor(level=3).stream_writer(raw, closefd=False)  # type: ignore[assignment]
    else:
        # Level 1: about 3x faster than 6 for ~10% larger shards; throughput is what a corpus run needs.
        out = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=1)  # type: ignore[assignment]
    # Records are small: one compressor call per megabyte, not per record.
    return io.BufferedWriter(out, buffer_size=1 << 20), raw  # type: ignore[arg-type]


class ShardWriter:
    def __init__(self, folder: Path, prefix: str, shard_docs: int, root: Path, fmt: str = "jsonl.gz") -> None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown shard format {fmt!r}: one of {', '.join(FORMATS)}")
        self.folder, self.prefix, self.shard_docs, self.root, self.fmt = folder, prefix, shard_docs, root, fmt
        self.folder.mkdir(parents=True, exist_ok=True)
        self.shards: list[dict[str, Any]] = []
        self._raw: IO[bytes] | None = None
        self._out: IO[bytes] | None = None
        self._count = 0
        self.documents = 0

    def write(self, record: dict[str, Any]) -> None:
        self.write_line(json.dumps(record, ensure_ascii=False, sort_keys=True).encode() + b"\n")

    def write_line(self, line: bytes) -> None:
        """One JSON record, already serialised and newline-terminated."""
        if self._out is None or self._count >= self.shard_docs:
            self._close_shard()
            path = self.folder / f"{self.prefix}-{len(self.shards):05d}.{self.fmt}"
            self._out, self._raw = _open(path, self.fmt)
            self.shards.append({"path": path.relative_to(self.root).as_posix(), "documents": 0})
        self._out.write(line)
        self._count += 1
        self.documents += 1
        self.shards[-1]["documents"] += 1

    def _close_shard(self) -> None:
        if self._out is None or self._raw is None:
            return
        self._out.close()
        self._raw.close()
        path = self.root / self.shards[-1]["path"]
        self.shards[-1]["bytes"] = path.stat().st_size
        self.shards[-1]["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
        self._out = self._raw = None
        self._count = 0

    def close(self) -> list[dict[str, Any]]:
        self._close_shard()
        return self.shards
