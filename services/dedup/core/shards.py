"""Deterministic gzip JSONL shard writer: the same documents give byte-identical shards (mtime 0)."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path
from typing import IO, Any


class ShardWriter:
    def __init__(self, folder: Path, prefix: str, shard_docs: int, root: Path) -> None:
        self.folder, self.prefix, self.shard_docs, self.root = folder, prefix, shard_docs, root
        self.folder.mkdir(parents=True, exist_ok=True)
        self.shards: list[dict[str, Any]] = []
        self._raw: IO[bytes] | None = None
        self._gz: gzip.GzipFile | None = None
        self._count = 0
        self.documents = 0

    def write(self, record: dict[str, Any]) -> None:
        if self._gz is None or self._count >= self.shard_docs:
            self._close_shard()
            path = self.folder / f"{self.prefix}-{len(self.shards):05d}.jsonl.gz"
            self._raw = open(path, "wb")
            self._gz = gzip.GzipFile(filename="", mode="wb", fileobj=self._raw, mtime=0)
            self.shards.append({"path": path.relative_to(self.root).as_posix(), "documents": 0})
        self._gz.write(json.dumps(record, ensure_ascii=False, sort_keys=True).encode() + b"\n")
        self._count += 1
        self.documents += 1
        self.shards[-1]["documents"] += 1

    def _close_shard(self) -> None:
        if self._gz is None or self._raw is None:
            return
        self._gz.close()
        self._raw.close()
        path = self.root / self.shards[-1]["path"]
        self.shards[-1]["bytes"] = path.stat().st_size
        self.shards[-1]["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
        self._gz = self._raw = None
        self._count = 0

    def close(self) -> list[dict[str, Any]]:
        self._close_shard()
        return self.shards
