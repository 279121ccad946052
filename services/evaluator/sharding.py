"""A run split into shards: planning, where each shard's details live, and assembling the report.

A shard is (task, [start, stop) of the task's scored samples). Its details are written to the
artifact store under the model version's results key, named by the task's version hash, so a
restarted run finds finished shards and only the missing ones are scored again.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.evaluator.loaders import DataUnavailable, load
from services.evaluator.runner import EvalReport, TaskOutcome, aggregate, select_samples
from services.evaluator.tasks import TaskConfig
from shared.artifacts import ArtifactStore


@dataclass(frozen=True)
class Shard:
    task: TaskConfig
    start: int
    stop: int

    def key(self, results_key: str) -> str:
        return f"{results_key}/shards/{self.task.name}-{self.task.version_hash[:12]}/{self.start:07d}-{self.stop:07d}.jsonl"


def plan_shards(
    tasks: list[TaskConfig], shard_size: int, data_root: Path | None, limit: int | None
) -> tuple[list[Shard], dict[str, str]]:
    """Shards of every task whose data is here; tasks without data are returned as skipped."""
    shards: list[Shard] = []
    skipped: dict[str, str] = {}
    for task in tasks:
        try:
            n = len(select_samples(load(task.loader, data_root), limit))
        except DataUnavailable as exc:
            skipped[task.name] = str(exc)
            continue
        shards += [Shard(task, s, min(s + shard_size, n)) for s in range(0, n, shard_size)]
    return shards, skipped


def write_shard(store: ArtifactStore, key: str, details: list[dict[str, Any]]) -> str:
    """Atomically (put_file replaces), so a shard file that exists is a finished shard."""
    with tempfile.TemporaryDirectory() as tmp:
        staging = Path(tmp) / "shard.jsonl"
        with open(staging, "w", encoding="utf-8") as f:
            for row in details:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        return store.put_file(staging, key).uri


def read_shard(store: ArtifactStore, uri: str) -> list[dict[str, Any]]:
    with store.open(uri, "r") as f:
        return [json.loads(line) for line in f if line.strip()]


def assemble(
    store: ArtifactStore, shards: list[Shard], results_key: str, skipped: dict[str, str]
) -> EvalReport:
    """The report from finished shards, task by task in plan order."""
    report = EvalReport(skipped=dict(skipped))
    by_task: dict[str, list[Shard]] = {}
    for shard in shards:
        by_task.setdefault(shard.task.name, []).append(shard)
    for parts in by_task.values():
        task = parts[0].task
        details = [
            row
            for p in sorted(parts, key=lambda p: p.start)
            for row in read_shard(store, store.uri(p.key(results_key)))
        ]
        report.outcomes.append(TaskOutcome(task, aggregate(task, details), len(details), details))
    return report
