"""Per-sample result cache: (model key, task version hash, sample id) -> the sample's detail row.

A restarted run resumes from what its shards already stored, and a repeated run costs nothing.
SQLite (stdlib, WAL) because several evaluator threads / replicas on one host may write at once;
replicas on other hosts share results through the artifact store instead.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    model TEXT NOT NULL, task TEXT NOT NULL, sample TEXT NOT NULL, detail TEXT NOT NULL,
    PRIMARY KEY (model, task, sample)
)
"""


class ResultCache:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(_SCHEMA)
        self._db.commit()

    def get_many(self, model: str, task: str, samples: Iterable[str]) -> dict[str, dict[str, Any]]:
        wanted = list(samples)
        out: dict[str, dict[str, Any]] = {}
        with self._lock:
            for start in range(0, len(wanted), 500):  # SQLite's bound-parameter limit
                chunk = wanted[start : start + 500]
                marks = ",".join("?" * len(chunk))
                rows = self._db.execute(
                    f"SELECT sample, detail FROM results WHERE model=? AND task=? AND sample IN ({marks})",
                    (model, task, *chunk),
                )
                out.update({s: json.loads(d) for s, d in rows})
        return out

    def put_many(self, model: str, task: str, details: Iterable[dict[str, Any]]) -> None:
        rows = [(model, task, str(d["id"]), json.dumps(d, ensure_ascii=False)) for d in details]
        with self._lock:
            self._db.executemany("INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?)", rows)
            self._db.commit()

    def close(self) -> None:
        with self._lock:
            self._db.close()


def fingerprint_model_dir(path: Path) -> str:
    """A content key for a model folder: small files whole, large ones by size + head + tail (hashing
    every byte of a 15 GB checkpoint would cost more than many evaluations)."""
    h = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        size = file.stat().st_size
        h.update(f"{file.relative_to(path)}:{size}\n".encode())
        with open(file, "rb") as f:
            if size <= 8 << 20:
                h.update(f.read())
            else:
                h.update(f.read(4 << 20))
                f.seek(-(4 << 20), 2)
                h.update(f.read())
    return h.hexdigest()
