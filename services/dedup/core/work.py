"""A dedup job's work folder in the artifact store: the plan, the items' results, and item records.

Item records are small JSON files, one per run of an item (never overwritten):
``items/<stage>-<index>/<worker>-<delivery>.started`` when a worker starts computing it and
``.done`` when its result is stored. They say which replica did what, and that a finished item
was never computed again (a redelivered item whose result exists is skipped without a record).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import fsspec

from services.dedup.core.distributed import PLAN, Plan
from shared.artifacts import ArtifactStore, local_path

WORKER_ID = f"{socket.gethostname()}-{os.getpid()}"


class WorkFolder:
    def __init__(self, store: ArtifactStore, uri: str) -> None:
        self.store, self.uri = store, uri.rstrip("/")

    def at(self, name: str) -> str:
        return f"{self.uri}/{name}"

    def key(self, name: str) -> str:
        return self.at(name).removeprefix(self.store.root_uri).strip("/")

    def exists(self, name: str) -> bool:
        return self.store.exists(self.at(name))

    def fetch(self, name: str) -> Path:
        return self.store.fetch(self.at(name))

    def put(self, src: Path, name: str) -> None:
        self.store.put_file(src, self.key(name))

    def staging(self, name: str) -> Path:
        """A local file to write ``name`` into before ``put`` (its final place when the store is local)."""
        lp = local_path(self.at(name))
        if lp is not None:
            lp.parent.mkdir(parents=True, exist_ok=True)
            return lp
        return Path(tempfile.mkdtemp(prefix="puyu-dedup-")) / Path(name).name

    def store_result(self, staged: Path, name: str) -> None:
        """Put a result written at ``staging(name)`` in place (nothing to do on a local store)."""
        if local_path(self.at(name)) is None:
            self.put(staged, name)
            shutil.rmtree(staged.parent, ignore_errors=True)

    def names(self, folder: str) -> set[str]:
        """The result files present under ``folder`` (e.g. every finished ``signatures`` item)."""
        fs, root = fsspec.core.url_to_fs(self.at(folder))
        if not fs.exists(root):
            return set()
        return {f"{folder}/{p.rstrip('/').rsplit('/', 1)[-1]}" for p in fs.find(root)}

    def write_json(self, name: str, obj: Any) -> None:
        self.store.write_json(self.key(name), obj)

    def read_json(self, name: str) -> Any:
        return self.store.read_json(self.at(name))

    def write_plan(self, plan: Plan) -> None:
        self.store.write_json(self.key(PLAN), json.loads(plan.to_json()))  # atomic on a local store

    def read_plan(self) -> Plan:
        with self.store.open(self.at(PLAN), "rb") as f:
            return Plan.from_json(f.read())

    def record(self, stage: str, index: int, event: str, delivery: int, **info: Any) -> None:
        """One item record (``event``: started | done), never overwriting another."""
        name = f"items/{stage}-{index:05d}/{WORKER_ID}-{delivery}.{event}"
        body = {"worker": WORKER_ID, "pid": os.getpid(), "delivery": delivery, "time": time.time(), **info}
        self.write_json(name, body)

    def records(self) -> list[dict[str, Any]]:
        """Every item record: stage, index, event, worker, pid, delivery, time."""
        fs, root = fsspec.core.url_to_fs(self.at("items"))
        if not fs.exists(root):
            return []
        out = []
        for path in sorted(fs.find(root)):
            item, name = path.rstrip("/").split("/")[-2:]
            stage, index = item.rsplit("-", 1)
            event = name.rsplit(".", 1)[1]
            with fs.open(path, "rb") as f:
                body = f.read()
            out.append({**json.loads(body), "stage": stage, "index": int(index), "event": event})
        return out

    def remove(self, name: str) -> None:
        """Drop a folder of intermediate results (signatures, pairs) once the job has its output."""
        lp = local_path(self.at(name))
        if lp is not None:
            shutil.rmtree(lp, ignore_errors=True)
            return
        fs, path = fsspec.core.url_to_fs(self.at(name))
        if fs.exists(path):
            fs.rm(path, recursive=True)


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per stage: items computed, runs started and finished, by which workers."""
    stages: dict[str, dict[str, Any]] = {}
    for r in records:
        s = stages.setdefault(r["stage"], {"started": 0, "done": 0, "items": set(), "workers": set()})
        s[r["event"]] = s.get(r["event"], 0) + 1
        s["items"].add(r["index"])
        s["workers"].add(r["worker"])
    return {
        k: {**v, "items": len(v["items"]), "workers": sorted(v["workers"])} for k, v in sorted(stages.items())
    }
