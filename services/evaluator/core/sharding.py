"""A run split into shards: the plan, where each shard's details live, and assembling the report.

A shard is (task, [start, stop) of the task's scored samples). Its details are written atomically
to the artifact store under the model version's results key, named by the task's version hash: a
shard file that exists is a finished shard, whichever job or replica scored it, so a repeated or
restarted run scores only the missing ones. The plan of a job (its shards, the tasks skipped for
want of data, what the adapter needs to end the job) is stored under a name fixed by the job id,
so whichever replica stores the job's last shard can assemble the report.
"""

from __future__ import annotations

import json
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contracts.events import ArtifactRef, ModelRef
from services.evaluator.core.errors import ShardRefused
from services.evaluator.core.loaders import DataUnavailable, load
from services.evaluator.core.runner import EvalReport, TaskOutcome, aggregate, select_samples, standard_errors
from services.evaluator.core.tasks import TaskConfig
from shared.artifacts import ArtifactStore


@dataclass(frozen=True)
class Shard:
    task: TaskConfig
    start: int
    stop: int

    def key(self, results_key: str) -> str:
        return f"{results_key}/shards/{self.task.name}-{self.task.version_hash[:12]}/{self.start:07d}-{self.stop:07d}.jsonl"


@dataclass(frozen=True)
class ShardWork:
    """One shard as a work item: what any replica needs to score it, and where its details go."""

    task: str
    task_version: str
    start: int
    stop: int
    limit: int | None
    result_uri: str

    def __post_init__(self) -> None:
        if self.start >= self.stop:
            raise ShardRefused(f"empty shard {self.task}[{self.start}:{self.stop}]")


@dataclass
class ShardPlan:
    job_id: str
    model: ModelRef
    artifact: ArtifactRef
    results_key: str
    shards: list[Shard]
    skipped: dict[str, str]  # task -> why it cannot run here
    limit: int | None
    extra: dict[str, Any] = field(default_factory=dict)  # the adapter's own (how to end the job)

    def to_json(self) -> dict[str, Any]:
        tasks = {s.task.name: s.task.model_dump(mode="json") for s in self.shards}
        return {
            "job_id": self.job_id,
            "model": self.model.model_dump(mode="json"),
            "artifact": self.artifact.model_dump(mode="json"),
            "results_key": self.results_key,
            "tasks": tasks,
            "shards": [[s.task.name, s.start, s.stop] for s in self.shards],
            "skipped": self.skipped,
            "limit": self.limit,
            "extra": self.extra,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> ShardPlan:
        tasks = {name: TaskConfig.model_validate(t) for name, t in raw["tasks"].items()}
        return cls(
            job_id=raw["job_id"],
            model=ModelRef.model_validate(raw["model"]),
            artifact=ArtifactRef.model_validate(raw["artifact"]),
            results_key=raw["results_key"],
            shards=[Shard(tasks[name], start, stop) for name, start, stop in raw["shards"]],
            skipped=raw["skipped"],
            limit=raw["limit"],
            extra=raw["extra"],
        )


def plan_key(results_key: str, job_id: str) -> str:
    """Where a job's plan lives: one file per job beside the shards of the model version."""
    return f"{results_key}/jobs/{re.sub(r'[^A-Za-z0-9_=.-]', '_', job_id)}.json"


def plan_shards(
    tasks: list[TaskConfig], shard_size: int, data_root: Path | None, limit: int | None
) -> tuple[list[Shard], dict[str, str]]:
    """Shards of every task whose data is here; tasks without data are returned as skipped."""
    shards: list[Shard] = []
    skipped: dict[str, str] = {}
    for task in tasks:
        if task.output_type == "pairwise":
            # its opponent is the champion when the run starts: not carried by a shard (yet)
            skipped[task.name] = "pairwise tasks run unsharded (PUYU_EVALUATOR_SHARD_SIZE unset)"
            continue
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
        report.outcomes.append(
            TaskOutcome(
                task, aggregate(task, details), len(details), details, stderr=standard_errors(task, details)
            )
        )
    return report
