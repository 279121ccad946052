"""The evaluator's core: tasks on a model, as one call (``evaluate_model``) or as the service runs
them (``Evaluator``): a registered model version fetched from the artifact store, evaluated whole or
as shards that any replica scores, its results stored under the version's results key.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from contracts.events import ArtifactRef, ModelRef
from services.evaluator.config import EvaluatorSettings, ModelDType
from services.evaluator.core.backends import Backend, ModelSpec, make_backend
from services.evaluator.core.cache import ResultCache
from services.evaluator.core.errors import ModelUnavailable, NothingToEvaluate, ShardRefused
from services.evaluator.core.loaders import load
from services.evaluator.core.runner import EvalReport, RunProgress, evaluate, run_task, write_report
from services.evaluator.core.sharding import (
    ShardPlan,
    ShardWork,
    assemble,
    plan_key,
    plan_shards,
    write_shard,
)
from services.evaluator.core.tasks import TaskConfig, resolve_tasks
from shared.artifacts import ArtifactStore


def evaluate_model(
    model: Path | ModelSpec,
    task_names: list[str],
    *,
    data_root: Path | None = None,
    perplexity_path: Path | None = None,
    tasks_dir: Path | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    num_threads: int | None = None,
    device: str = "cpu",
    dtype: ModelDType = "auto",
    progress: RunProgress | None = None,
    cache_path: Path | None = None,
) -> EvalReport:
    """Resolve the tasks first (unknown names fail before the model is loaded), then run them."""
    spec = model if isinstance(model, ModelSpec) else ModelSpec(path=model)
    tasks = resolve_tasks(task_names, perplexity_path=perplexity_path, tasks_dir=tasks_dir)
    backend, model_key = make_backend(
        spec, batch_size=batch_size, num_threads=num_threads, device=device, dtype=dtype
    )
    cache = ResultCache(cache_path) if cache_path else None
    try:
        return evaluate(
            tasks,
            backend,
            data_root=data_root,
            limit=limit,
            progress=progress,
            cache=cache,
            model_key=model_key,
        )
    finally:
        if cache is not None:
            cache.close()


def results_key(model_name: str, version: int) -> str:
    """Where a model version's results live in the artifact store."""
    return f"evals/{model_name}/v{version}"


@dataclass(frozen=True)
class StoredEvaluation:
    """A report written to the artifact store (``details_uri``: its folder)."""

    report: EvalReport
    details_uri: str

    @property
    def job_result(self) -> dict[str, Any]:
        return {
            "summary": self.report.summary(),
            "skipped": self.report.skipped,
            "details_uri": self.details_uri,
        }


class Evaluator:
    """Evaluations as the settings configure them (data, tasks folder, cache, batch, device, dtype)."""

    def __init__(self, settings: EvaluatorSettings, store: ArtifactStore | None = None) -> None:
        self.settings = settings
        if store is not None:
            self.store = store
        self._backend: tuple[str, Backend, str] | None = None  # (artifact uri, backend, cache key)
        self._backend_lock = threading.Lock()

    @cached_property
    def store(self) -> ArtifactStore:
        """Created on first use: the standalone command evaluates local folders and needs none."""
        return ArtifactStore(self.settings.artifact_root_uri)

    @property
    def sharded(self) -> bool:
        return self.settings.evaluator_shard_size is not None

    def resolve(self, tasks: list[str]) -> list[TaskConfig]:
        """The tasks by name; ``UnknownTask`` names every unknown one."""
        s = self.settings
        return resolve_tasks(
            tasks, perplexity_path=s.evaluator_perplexity_path, tasks_dir=s.evaluator_tasks_dir
        )

    def check_tasks(self, tasks: list[str]) -> None:
        self.resolve(tasks)

    # ------------------------------------------------------------------------------ whole runs
    def evaluate(
        self,
        spec: ModelSpec,
        tasks: list[str],
        *,
        limit: int | None = None,
        progress: RunProgress | None = None,
    ) -> EvalReport:
        """A model folder or endpoint on ``tasks`` (nothing stored: the caller writes the report)."""
        s = self.settings
        return evaluate_model(
            spec,
            tasks,
            data_root=s.evaluator_data_dir,
            perplexity_path=s.evaluator_perplexity_path,
            tasks_dir=s.evaluator_tasks_dir,
            limit=limit or s.evaluator_limit,
            batch_size=s.evaluator_batch_size,
            num_threads=s.evaluator_num_threads,
            device=s.evaluator_device,
            dtype=s.evaluator_dtype,
            progress=progress,
            cache_path=s.cache_file(),
        )

    def evaluate_version(
        self, model: ModelRef, artifact: ArtifactRef, tasks: list[str], progress: RunProgress | None = None
    ) -> StoredEvaluation:
        """Blocking: fetch the version's artifact, evaluate it, store the report."""
        spec = ModelSpec(path=self._fetch(model, artifact), sha256=artifact.sha256 or None)
        report = self.evaluate(spec, tasks, progress=progress)
        return self._store_report(model, artifact, report)

    def _store_report(self, model: ModelRef, artifact: ArtifactRef, report: EvalReport) -> StoredEvaluation:
        if not report.outcomes:
            raise NothingToEvaluate(f"no task could run: {report.skipped}")
        key = results_key(model.model_name, model.version)
        staging = self.store.local_staging(key)
        write_report(report, staging, extra={"model": model.model_dump(), "artifact_sha256": artifact.sha256})
        self.store.put_dir(staging, key)
        return StoredEvaluation(report, self.store.uri(key))

    def _fetch(self, model: ModelRef, artifact: ArtifactRef) -> Path:
        try:
            return self.store.fetch(artifact.uri)
        except FileNotFoundError as exc:
            raise ModelUnavailable(f"model {model.model_name} v{model.version}: {exc}") from exc

    # ------------------------------------------------------------------------------ sharded runs
    def plan(
        self,
        job_id: str,
        model: ModelRef,
        artifact: ArtifactRef,
        tasks: list[str],
        extra: dict[str, Any] | None = None,
    ) -> ShardPlan:
        """Blocking: the job's shards (of every task whose data is here), stored under the job's
        fixed plan name before any shard is handed out."""
        s = self.settings
        assert s.evaluator_shard_size is not None
        shards, skipped = plan_shards(
            self.resolve(tasks), s.evaluator_shard_size, s.evaluator_data_dir, s.evaluator_limit
        )
        if not shards:
            raise NothingToEvaluate(f"no task could run: {skipped}")
        key = results_key(model.model_name, model.version)
        plan = ShardPlan(job_id, model, artifact, key, shards, skipped, s.evaluator_limit, extra or {})
        self.store.write_json(plan_key(key, job_id), plan.to_json())
        return plan

    def read_plan(self, model: ModelRef, job_id: str) -> ShardPlan:
        uri = self.store.uri(plan_key(results_key(model.model_name, model.version), job_id))
        if not self.store.exists(uri):
            raise ShardRefused(f"job {job_id}: no shard plan at {uri}")
        return ShardPlan.from_json(self.store.read_json(uri))

    def work_items(self, plan: ShardPlan) -> list[ShardWork]:
        return [
            ShardWork(
                s.task.name,
                s.task.version_hash,
                s.start,
                s.stop,
                plan.limit,
                self.store.uri(s.key(plan.results_key)),
            )
            for s in plan.shards
        ]

    def is_stored(self, work: ShardWork) -> bool:
        return self.store.exists(work.result_uri)

    def stored_count(self, plan: ShardPlan) -> int:
        return sum(self.is_stored(w) for w in self.work_items(plan))

    def run_shard(self, model: ModelRef, artifact: ArtifactRef, work: ShardWork) -> None:
        """Blocking: score one shard and store its details atomically at ``work.result_uri`` (the
        model stays loaded for the next shard of the same version)."""
        (task,) = self.resolve([work.task])
        if task.version_hash != work.task_version:
            raise ShardRefused(
                f"task {work.task}: this replica's definition differs ({task.version_hash[:12]})"
            )
        backend, model_key = self._backend_for(model, artifact)
        dataset = load(task.loader, self.settings.evaluator_data_dir)
        cache_file = self.settings.cache_file()
        cache = ResultCache(cache_file) if cache_file else None
        try:
            outcome = run_task(
                task,
                backend,
                dataset,
                limit=work.limit,
                shard=(work.start, work.stop),
                cache=cache,
                model_key=model_key,
            )
        finally:
            if cache is not None:
                cache.close()
        write_shard(self.store, work.result_uri.removeprefix(self.store.root_uri).strip("/"), outcome.details)

    def finish(self, plan: ShardPlan) -> StoredEvaluation:
        """Blocking: the report assembled from every stored shard of the plan, stored. Idempotent:
        whoever calls it again writes the same report."""
        report = assemble(self.store, plan.shards, plan.results_key, plan.skipped)
        return self._store_report(plan.model, plan.artifact, report)

    def _backend_for(self, model: ModelRef, artifact: ArtifactRef) -> tuple[Backend, str]:
        with self._backend_lock:
            if self._backend is None or self._backend[0] != artifact.uri:
                s = self.settings
                backend, key = make_backend(
                    ModelSpec(path=self._fetch(model, artifact), sha256=artifact.sha256 or None),
                    batch_size=s.evaluator_batch_size,
                    num_threads=s.evaluator_num_threads,
                    device=s.evaluator_device,
                    dtype=s.evaluator_dtype,
                )
                self._backend = (artifact.uri, backend, key)
            return self._backend[1], self._backend[2]
