"""Bus adapters: ModelRegistered (fact) and EvaluateRequested (job) -> EvaluationCompleted, and
EvaluateShardRequested (work item) when runs are sharded across replicas.

Each handler resolves the tasks and fetches the model on the loop (cheap, and bad input becomes a
JobRejected at once), then runs the evaluation in a worker thread so the message keep-alive runs.
With ``PUYU_EVALUATOR_SHARD_SIZE`` set, the handler of a run publishes its shards as work items,
waits for their result files (any replica, itself included, scores them) and assembles the report;
a redelivered or restarted run re-publishes only what is missing and finds the rest done.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from contracts.events import (
    ArtifactRef,
    EvaluateRequested,
    EvaluateShardRequested,
    EvaluationCompleted,
    ModelRef,
    ModelRegistered,
    TaskResult,
)
from services.evaluator.backends import Backend, ModelLoadError
from services.evaluator.cache import ResultCache
from services.evaluator.config import EvaluatorSettings
from services.evaluator.core import ModelSpec, evaluate_model, make_backend, results_key
from services.evaluator.loaders import DataUnavailable, load
from services.evaluator.runner import EvalReport, run_task, write_report
from services.evaluator.sharding import Shard, assemble, plan_shards, write_shard
from services.evaluator.tasks import TaskConfig, UnknownTask, resolve_tasks
from shared.artifacts import ArtifactStore
from shared.bus import Bus, HandlerContext, JobRejected

JOB_KIND = "evaluate"
# A tiny model on the CPU takes seconds; a real suite minutes: the keep-alive extends the deadline.
ACK_WAIT = 60.0


def registered_job_id(model: ModelRef) -> str:
    """The job-board id of the evaluation a registration triggers (visible in `puyu status`)."""
    return f"eval-{model.model_name}-v{model.version}"


def task_results(report: EvalReport) -> list[TaskResult]:
    return [
        TaskResult(
            task=o.task.name,
            # JSON has no NaN: a metric that could not be computed is left out rather than faked.
            metrics={k: float(v) for k, v in o.metrics.items() if math.isfinite(v)},
            primary_metric=o.task.primary_metric,
            higher_is_better=o.task.higher_is_better,
            version_hash=o.task.version_hash,
            num_samples=o.num_samples,
        )
        for o in report.outcomes
    ]


class EvaluationRunner:
    """Runs one model version's evaluation (whole, or one shard of it) and stores the results."""

    def __init__(self, settings: EvaluatorSettings, store: ArtifactStore) -> None:
        self.settings = settings
        self.store = store
        self._backend: tuple[str, Backend, str] | None = None  # (artifact uri, backend, cache key)
        self._backend_lock = threading.Lock()

    def resolve(self, tasks: list[str]) -> list[TaskConfig]:
        try:
            return resolve_tasks(
                tasks,
                perplexity_path=self.settings.evaluator_perplexity_path,
                tasks_dir=self.settings.evaluator_tasks_dir,
            )
        except UnknownTask as exc:
            raise JobRejected(str(exc)) from exc

    def check_tasks(self, tasks: list[str]) -> None:
        self.resolve(tasks)

    def _fetch(self, model: ModelRef, artifact: ArtifactRef) -> Path:
        try:
            return self.store.fetch(artifact.uri)
        except FileNotFoundError as exc:
            raise JobRejected(f"model {model.model_name} v{model.version}: {exc}") from exc

    def run(
        self,
        model: ModelRef,
        artifact: ArtifactRef,
        tasks: list[str],
        progress: Callable[[str, float, str], None] | None,
    ) -> tuple[EvaluationCompleted, dict[str, Any]]:
        """Blocking: fetch, evaluate, write results. Returns the event and the job result."""
        s = self.settings
        model_dir = self._fetch(model, artifact)
        try:
            report = evaluate_model(
                ModelSpec(path=model_dir, sha256=artifact.sha256 or None),
                tasks,
                data_root=s.evaluator_data_dir,
                perplexity_path=s.evaluator_perplexity_path,
                tasks_dir=s.evaluator_tasks_dir,
                cache_path=s.cache_file(),
                limit=s.evaluator_limit,
                batch_size=s.evaluator_batch_size,
                num_threads=s.evaluator_num_threads,
                device=s.evaluator_device,
                progress=progress,
            )
        except (ModelLoadError, UnknownTask, DataUnavailable) as exc:
            raise JobRejected(f"model {model.model_name} v{model.version}: {exc}") from exc
        return self.publishable(model, artifact, report)

    def publishable(
        self, model: ModelRef, artifact: ArtifactRef, report: EvalReport
    ) -> tuple[EvaluationCompleted, dict[str, Any]]:
        """Store the report under the version's results key; the event and the job result."""
        if not report.outcomes:
            raise JobRejected(f"no task could run: {report.skipped}")
        key = results_key(model.model_name, model.version)
        staging = self.store.local_staging(key)
        write_report(report, staging, extra={"model": model.model_dump(), "artifact_sha256": artifact.sha256})
        self.store.put_dir(staging, key)
        details_uri = self.store.uri(key)
        event = EvaluationCompleted(model=model, results=task_results(report), details_uri=details_uri)
        result = {"summary": report.summary(), "skipped": report.skipped, "details_uri": details_uri}
        return event, result

    # ------------------------------------------------------------------------------ shards
    def plan(self, model: ModelRef, tasks: list[str]) -> tuple[list[Shard], dict[str, str]]:
        assert self.settings.evaluator_shard_size
        configs = self.resolve(tasks)
        return plan_shards(
            configs,
            self.settings.evaluator_shard_size,
            self.settings.evaluator_data_dir,
            self.settings.evaluator_limit,
        )

    def shard_done(self, uri: str) -> bool:
        return self.store.exists(uri)

    def run_shard(self, req: EvaluateShardRequested) -> None:
        """Blocking: score one shard (the model stays loaded for the next shard of the same version)."""
        s = self.settings
        (task,) = self.resolve([req.task])
        if task.version_hash != req.task_version:
            raise JobRejected(
                f"task {req.task}: this replica's definition differs ({task.version_hash[:12]})"
            )
        backend, model_key = self._backend_for(req.model, req.artifact)
        try:
            dataset = load(task.loader, s.evaluator_data_dir)
        except DataUnavailable as exc:
            raise JobRejected(f"shard {req.task}[{req.start}:{req.stop}]: {exc}") from exc
        cache_file = s.cache_file()
        cache = ResultCache(cache_file) if cache_file else None
        try:
            outcome = run_task(
                task,
                backend,
                dataset,
                limit=req.limit,
                shard=(req.start, req.stop),
                cache=cache,
                model_key=model_key,
            )
        finally:
            if cache is not None:
                cache.close()
        key = req.result_uri.removeprefix(self.store.root_uri).strip("/")
        write_shard(self.store, key, outcome.details)

    def _backend_for(self, model: ModelRef, artifact: ArtifactRef) -> tuple[Backend, str]:
        with self._backend_lock:
            if self._backend is None or self._backend[0] != artifact.uri:
                model_dir = self._fetch(model, artifact)
                s = self.settings
                try:
                    backend, key = make_backend(
                        ModelSpec(path=model_dir, sha256=artifact.sha256 or None),
                        batch_size=s.evaluator_batch_size,
                        num_threads=s.evaluator_num_threads,
                        device=s.evaluator_device,
                    )
                except ModelLoadError as exc:
                    raise JobRejected(f"model {model.model_name} v{model.version}: {exc}") from exc
                self._backend = (artifact.uri, backend, key)
            return self._backend[1], self._backend[2]


def register_handlers(bus: Bus, runner: EvaluationRunner) -> None:
    settings = runner.settings

    async def evaluate_sharded(
        ctx: HandlerContext[Any], job_id: str, model: ModelRef, artifact: ArtifactRef, tasks: list[str]
    ) -> tuple[EvaluationCompleted, dict[str, Any]]:
        shards, skipped = await asyncio.to_thread(runner.plan, model, tasks)
        if not shards:
            raise JobRejected(f"no task could run: {skipped}")
        key = results_key(model.model_name, model.version)
        uris = [runner.store.uri(s.key(key)) for s in shards]
        pending = [(s, u) for s, u in zip(shards, uris, strict=True) if not runner.shard_done(u)]
        for shard, uri in pending:
            await ctx.publish(
                EvaluateShardRequested(
                    job_id=job_id,
                    model=model,
                    artifact=artifact,
                    task=shard.task.name,
                    task_version=shard.task.version_hash,
                    start=shard.start,
                    stop=shard.stop,
                    limit=settings.evaluator_limit,
                    result_uri=uri,
                ),
                event_id=f"shard:{job_id}:{shard.task.version_hash[:12]}:{shard.start}",
            )
        deadline = time.monotonic() + settings.evaluator_shard_timeout_s
        while True:
            done = sum(await asyncio.to_thread(lambda: [runner.shard_done(u) for u in uris]))
            await bus.jobs.update(
                job_id,
                JOB_KIND,
                state="running",
                stage="shards",
                fraction=done / len(uris) * 0.99,
                message=f"{done}/{len(uris)} shards",
                correlation_id=ctx.envelope.correlation_id,
            )
            if done == len(uris):
                break
            if time.monotonic() > deadline:
                # retried by the bus (back-off, then dead-letter): finished shards are kept
                raise TimeoutError(f"{len(uris) - done} of {len(uris)} shards unfinished")
            await asyncio.sleep(1.0)
        report = await asyncio.to_thread(assemble, runner.store, shards, key, skipped)
        return await asyncio.to_thread(runner.publishable, model, artifact, report)

    async def evaluate(
        ctx: HandlerContext[Any], job_id: str, model: ModelRef, artifact: ArtifactRef, tasks: list[str]
    ) -> tuple[EvaluationCompleted, dict[str, Any]]:
        runner.check_tasks(tasks)
        await bus.jobs.update(
            job_id, JOB_KIND, state="running", stage="evaluate", correlation_id=ctx.envelope.correlation_id
        )
        if settings.evaluator_shard_size:
            return await evaluate_sharded(ctx, job_id, model, artifact, tasks)
        progress = ctx.progress_from_thread(job_id, JOB_KIND)
        try:
            return await asyncio.to_thread(runner.run, model, artifact, tasks, progress)
        finally:
            await progress.flush()

    @bus.handle(ModelRegistered, ack_wait=ACK_WAIT)
    async def on_model_registered(ctx: HandlerContext[ModelRegistered]) -> None:
        p = ctx.payload
        job_id = registered_job_id(p.model)
        event, result = await evaluate(ctx, job_id, p.model, p.artifact, p.tasks)
        await ctx.publish(event, event_id=f"eval:{p.model.model_name}:{p.model.version}")
        await bus.jobs.update(job_id, JOB_KIND, state="succeeded", fraction=1.0, result=result)

    @bus.handle(EvaluateRequested, ack_wait=ACK_WAIT)
    async def on_evaluate_requested(ctx: HandlerContext[EvaluateRequested]) -> None:
        p = ctx.payload
        event, result = await evaluate(ctx, p.job_id, p.model, p.artifact, p.tasks)
        # Keyed by job too: an explicit re-evaluation (other tasks) must not be swallowed as a duplicate
        # of the registration's evaluation by the stream's Msg-Id window.
        await ctx.publish(event, event_id=f"eval:{p.model.model_name}:{p.model.version}:{p.job_id}")
        await bus.jobs.update(p.job_id, JOB_KIND, state="succeeded", fraction=1.0, result=result)

    @bus.handle(EvaluateShardRequested, ack_wait=ACK_WAIT)
    async def on_shard(ctx: HandlerContext[EvaluateShardRequested]) -> None:
        p = ctx.payload
        if p.start >= p.stop:
            raise JobRejected(f"empty shard {p.task}[{p.start}:{p.stop}]")
        if await asyncio.to_thread(runner.shard_done, p.result_uri):
            return  # another replica, or an earlier delivery, finished it
        await asyncio.to_thread(runner.run_shard, p)
