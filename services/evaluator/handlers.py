"""Bus adapters: ModelRegistered (fact) and EvaluateRequested (job) -> EvaluationCompleted.

Each handler resolves the tasks and fetches the model on the loop (cheap, and bad input becomes a
JobRejected at once), then runs the evaluation in a worker thread so the message keep-alive runs.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Any

from contracts.events import (
    ArtifactRef,
    EvaluateRequested,
    EvaluationCompleted,
    ModelRef,
    ModelRegistered,
    TaskResult,
)
from services.evaluator.backends import ModelLoadError
from services.evaluator.config import EvaluatorSettings
from services.evaluator.core import evaluate_model, results_key
from services.evaluator.runner import EvalReport, write_report
from services.evaluator.tasks import UnknownTask, resolve_tasks
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
    """Runs one model version's evaluation for an event and stores the results."""

    def __init__(self, settings: EvaluatorSettings, store: ArtifactStore) -> None:
        self.settings = settings
        self.store = store

    def check_tasks(self, tasks: list[str]) -> None:
        try:
            resolve_tasks(tasks, perplexity_path=self.settings.evaluator_perplexity_path)
        except UnknownTask as exc:
            raise JobRejected(str(exc)) from exc

    def run(
        self,
        model: ModelRef,
        artifact: ArtifactRef,
        tasks: list[str],
        progress: Callable[[str, float, str], None] | None,
    ) -> tuple[EvaluationCompleted, dict[str, Any]]:
        """Blocking: fetch, evaluate, write results. Returns the event and the job result."""
        s = self.settings
        try:
            model_dir = self.store.fetch(artifact.uri)
        except FileNotFoundError as exc:
            raise JobRejected(f"model {model.model_name} v{model.version}: {exc}") from exc
        try:
            report = evaluate_model(
                model_dir,
                tasks,
                data_root=s.evaluator_data_dir,
                perplexity_path=s.evaluator_perplexity_path,
                limit=s.evaluator_limit,
                batch_size=s.evaluator_batch_size,
                num_threads=s.evaluator_num_threads,
                device=s.evaluator_device,
                progress=progress,
            )
        except (ModelLoadError, UnknownTask) as exc:
            raise JobRejected(f"model {model.model_name} v{model.version}: {exc}") from exc
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


def register_handlers(bus: Bus, runner: EvaluationRunner) -> None:
    async def evaluate(
        ctx: HandlerContext[Any], job_id: str, model: ModelRef, artifact: ArtifactRef, tasks: list[str]
    ) -> tuple[EvaluationCompleted, dict[str, Any]]:
        runner.check_tasks(tasks)
        await bus.jobs.update(
            job_id, JOB_KIND, state="running", stage="evaluate", correlation_id=ctx.envelope.correlation_id
        )
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
