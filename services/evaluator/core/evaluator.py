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
from services.evaluator.core.cache import ResultCache, fingerprint_model_dir
from services.evaluator.core.errors import ModelUnavailable, NothingToEvaluate, ShardRefused
from services.evaluator.core.judge import JudgeClient, JudgeEndpoint
from services.evaluator.core.judging import Opponent
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
    judge: JudgeEndpoint | None = None,
    opponent: ModelSpec | None = None,
    opponent_label: str | None = None,
) -> EvalReport:
    """Resolve the tasks first (unknown names fail before the model is loaded), then run them.
    ``judge``: the judged tasks' judge; ``opponent``: whom pairwise tasks compare against (loaded
    only when its answers are not cached)."""
    spec = model if isinstance(model, ModelSpec) else ModelSpec(path=model)
    tasks = resolve_tasks(task_names, perplexity_path=perplexity_path, tasks_dir=tasks_dir)
    options = {"batch_size": batch_size, "num_threads": num_threads, "device": device, "dtype": dtype}
    backend, model_key = make_backend(spec, **options)  # type: ignore[arg-type]
    cache = ResultCache(cache_path) if cache_path else None
    client = JudgeClient(judge) if judge else None
    rival = None
    if opponent is not None:
        rival = Opponent(
            opponent_label or str(opponent.path or opponent.model_name),
            _identity(opponent),
            lambda: make_backend(opponent, **options),  # type: ignore[arg-type]
        )
    try:
        return evaluate(
            tasks,
            backend,
            data_root=data_root,
            limit=limit,
            progress=progress,
            cache=cache,
            model_key=model_key,
            judge=client,
            opponent=rival,
        )
    finally:
        if cache is not None:
            cache.close()
        if client is not None:
            client.close()


def _identity(spec: ModelSpec) -> str:
    """What an opponent's answers depend on: its content (or the served model behind an endpoint)."""
    if spec.endpoint is not None:
        return f"openai:{spec.endpoint}:{spec.model_name}"
    assert spec.path is not None
    return f"hf:{spec.sha256 or fingerprint_model_dir(spec.path)}"


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
            "failed": self.report.failed,
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

    def needs_opponent(self, tasks: list[str]) -> bool:
        """Whether some task compares against the champion (the adapter then looks it up)."""
        return any(t.output_type == "pairwise" for t in self.resolve(tasks))

    def judge_endpoint(self) -> JudgeEndpoint | None:
        s = self.settings
        if not s.evaluator_judge_url or not s.evaluator_judge_model:
            return None
        return JudgeEndpoint(
            s.evaluator_judge_url,
            s.evaluator_judge_model,
            api_key=s.evaluator_judge_api_key.get_secret_value() if s.evaluator_judge_api_key else None,
            timeout_s=s.evaluator_judge_timeout_s,
            retries=s.evaluator_judge_retries,
            concurrency=s.evaluator_judge_concurrency,
        )

    # ------------------------------------------------------------------------------ whole runs
    def evaluate(
        self,
        spec: ModelSpec,
        tasks: list[str],
        *,
        limit: int | None = None,
        progress: RunProgress | None = None,
        opponent: ModelSpec | None = None,
        opponent_label: str | None = None,
    ) -> EvalReport:
        """A model folder or endpoint on ``tasks`` (nothing stored: the caller writes the report);
        pairwise tasks compare it with ``opponent``."""
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
            judge=self.judge_endpoint(),
            opponent=opponent,
            opponent_label=opponent_label,
        )

    def evaluate_version(
        self,
        model: ModelRef,
        artifact: ArtifactRef,
        tasks: list[str],
        progress: RunProgress | None = None,
        champion: tuple[ModelRef, ArtifactRef] | None = None,
    ) -> StoredEvaluation:
        """Blocking: fetch the version's artifact, evaluate it (pairwise tasks against ``champion``;
        none when the version is the champion itself), store the report."""
        spec = ModelSpec(path=self._fetch(model, artifact), sha256=artifact.sha256 or None)
        opponent, label = None, None
        if champion is not None and champion[0] != model:
            ref, art = champion
            opponent = ModelSpec(path=self._fetch(ref, art), sha256=art.sha256 or None)
            label = f"{ref.model_name}:{ref.version}"
        report = self.evaluate(spec, tasks, progress=progress, opponent=opponent, opponent_label=label)
        return self._store_report(model, artifact, report)

    def _store_report(self, model: ModelRef, artifact: ArtifactRef, report: EvalReport) -> StoredEvaluation:
        if not report.outcomes:
            raise NothingToEvaluate(f"no task could run: {report.skipped | report.failed}")
        key = results_key(model.model_name, model.version)
        staging = self.store.local_staging(key)
        write_report(report, staging, extra={"model": model.model_dump(), "artifact_sha256": artifact.sha256})
        self.store.put_dir(staging, key)
        return StoredEvaluation(report, self.store.uri(key))

    def _fetch(self, model: ModelRef, artifact: ArtifactRef) -> Path:
        """The version's folder, from the artifact store and with the digest it was registered with:
        a folder outside the store, or swapped after registration, is refused, not evaluated."""
        try:
            return self.store.fetch_verified(artifact)
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
        runnable, skipped = [], {}
        for task in self.resolve(tasks):
            if task.output_type == "judged" and self.judge_endpoint() is None:
                skipped[task.name] = (
                    "no judge configured (PUYU_EVALUATOR_JUDGE_URL and PUYU_EVALUATOR_JUDGE_MODEL)"
                )
            else:
                runnable.append(task)
        shards, no_data = plan_shards(
            runnable, s.evaluator_shard_size, s.evaluator_data_dir, s.evaluator_limit
        )
        skipped |= no_data
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
        judge_at = self.judge_endpoint()
        judge = JudgeClient(judge_at) if judge_at and task.output_type == "judged" else None
        try:
            outcome = run_task(
                task,
                backend,
                dataset,
                limit=work.limit,
                shard=(work.start, work.stop),
                cache=cache,
                model_key=model_key,
                judge=judge,
                data_root=self.settings.evaluator_data_dir,
            )
        finally:
            if cache is not None:
                cache.close()
            if judge is not None:
                judge.close()
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
