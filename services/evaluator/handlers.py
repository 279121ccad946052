"""Bus adapters: ModelRegistered (fact) and EvaluateRequested (job) -> EvaluationCompleted, and
EvaluateShardRequested (work item) when runs are sharded across replicas.

Whole runs: the replica that takes the request evaluates in a worker thread (the message keep-alive
runs meanwhile), publishes ``evaluation.completed`` and ends the job.

Sharded runs (``PUYU_EVALUATOR_SHARD_SIZE``): the request's replica stores the job's plan and
publishes the shards not stored yet as work items, then leaves the job running. Every replica takes
items: it scores a shard unless its result is already stored, then counts the stored results; the
one that finds all of them stored (its own was the last) assembles the report, publishes
``evaluation.completed`` and ends the job. Shard items and the completion event have ids fixed by
the job, so a redelivery, a re-planned request or two replicas finishing at once store one copy on
the bus.
"""

from __future__ import annotations

import asyncio
import math
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
from services.evaluator.config import EvaluatorSettings
from services.evaluator.core import EvalReport, Evaluator, ShardPlan, ShardWork, StoredEvaluation
from services.evaluator.registry_client import find_champion
from shared.auth import ClientAuth
from shared.bus import Bus, HandlerContext, JobRun
from shared.bus.jobs import TERMINAL_STATES
from shared.ports import registry_grpc_target
from shared.provenance import require_owner

JOB_KIND = "evaluate"
# A tiny model on the CPU takes seconds; a real suite minutes: the keep-alive extends the deadline.
ACK_WAIT = 60.0
COMPLETION_EVENT = "completion_event_id"  # in a plan's extra: the id of the event that ends the job


def registered_job_id(model: ModelRef) -> str:
    """The job-board id of the evaluation a registration triggers (visible in `puyu status`)."""
    return f"eval-{model.model_name}-v{model.version}"


def task_results(report: EvalReport) -> list[TaskResult]:
    return [
        TaskResult(
            task=o.task.name,
            # JSON has no NaN: a metric that could not be computed is left out rather than faked.
            metrics={k: float(v) for k, v in o.metrics_with_stderr().items() if math.isfinite(v)},
            primary_metric=o.task.primary_metric,
            higher_is_better=o.task.higher_is_better,
            version_hash=o.version_hash,
            num_samples=o.num_samples,
            opponent=_model_ref(o.opponent),
        )
        for o in report.outcomes
    ]


def _model_ref(label: str | None) -> ModelRef | None:
    if not label:
        return None
    name, _, version = label.rpartition(":")
    return ModelRef(model_name=name, version=int(version)) if name and version.isdigit() else None


def shard_request(plan: ShardPlan, work: ShardWork) -> EvaluateShardRequested:
    return EvaluateShardRequested(
        job_id=plan.job_id,
        model=plan.model,
        artifact=plan.artifact,
        task=work.task,
        task_version=work.task_version,
        start=work.start,
        stop=work.stop,
        limit=work.limit,
        result_uri=work.result_uri,
    )


def _complete(job: JobRun, model: ModelRef, stored: StoredEvaluation, event_id: str) -> None:
    event = EvaluationCompleted(
        model=model,
        results=task_results(stored.report),
        details_uri=stored.details_uri,
        failed=stored.report.failed,
    )
    job.succeed(
        f"{len(event.results)} task(s) evaluated", result=stored.job_result, event=event, event_id=event_id
    )


async def _hand_out_shards(
    ctx: HandlerContext[Any],
    job: JobRun,
    core: Evaluator,
    model: ModelRef,
    artifact: ArtifactRef,
    tasks: list[str],
    event_id: str,
) -> None:
    plan = await asyncio.to_thread(
        core.plan, job.job_id, model, artifact, tasks, {COMPLETION_EVENT: event_id}
    )
    items = core.work_items(plan)
    pending = [w for w in items if not await asyncio.to_thread(core.is_stored, w)]
    if not pending:  # all scored before (a repeated run): this replica ends the job
        _complete(job, model, await asyncio.to_thread(core.finish, plan), event_id)
        return
    done = len(items) - len(pending)
    # before the items go out: a late "running" must not follow the last shard's success
    await job.progress("shards", done / len(items) * 0.99, f"{done}/{len(items)} shards")
    for work in pending:
        await ctx.publish(
            shard_request(plan, work),
            event_id=f"shard:{plan.job_id}:{work.task_version[:12]}:{work.start}",
        )
    job.continues_elsewhere()


async def _evaluate(
    ctx: HandlerContext[Any],
    core: Evaluator,
    settings: EvaluatorSettings,
    job_id: str,
    model: ModelRef,
    artifact: ArtifactRef,
    tasks: list[str],
    event_id: str,
    champion: tuple[ModelRef, ArtifactRef] | None = None,
) -> None:
    # an unknown task is refused before the job starts (a registration's job has no request
    # event that the bus could mark failed)
    await asyncio.to_thread(core.check_tasks, tasks)
    async with ctx.job(job_id, JOB_KIND, stage="evaluate") as job:
        if job.cancelled:
            return
        if core.sharded:
            await _hand_out_shards(ctx, job, core, model, artifact, tasks, event_id)
            return
        if champion is None and await asyncio.to_thread(core.needs_opponent, tasks):
            champion = await find_champion(
                registry_grpc_target(settings),
                model.model_name,
                settings.evaluator_registry_timeout_s,
                ClientAuth.from_settings(settings),
            )
        stored = await asyncio.to_thread(
            core.evaluate_version, model, artifact, tasks, job.thread_progress(), champion
        )
        _complete(job, model, stored, event_id)


async def _score_shard(ctx: HandlerContext[EvaluateShardRequested], core: Evaluator) -> None:
    p = ctx.payload
    work = ShardWork(p.task, p.task_version, p.start, p.stop, p.limit, p.result_uri)
    status = await ctx.bus.jobs.get(p.job_id)
    if status is not None and status.state in TERMINAL_STATES:
        return  # a late copy (the job ended), or a shard of a failed or cancelled job
    plan = await asyncio.to_thread(core.read_plan, p.model, p.job_id)
    total = len(plan.shards)
    if not await asyncio.to_thread(core.is_stored, work):  # else: an earlier delivery stored it
        done = await asyncio.to_thread(core.stored_count, plan)
        # before this shard is stored: no "running" can land after the job's success
        await ctx.progress(p.job_id, JOB_KIND, "shards", done / total * 0.99, f"{done}/{total} shards")
        await asyncio.to_thread(core.run_shard, p.model, p.artifact, work)
    if await asyncio.to_thread(core.stored_count, plan) < total:
        return
    # The job's last shard is stored: this replica ends the job. Two that get here at once write
    # the same report and publish one event (its id is fixed by the job).
    async with ctx.job(p.job_id, JOB_KIND, stage="assemble", message=f"{total} shards") as job:
        if job.cancelled:
            return
        stored = await asyncio.to_thread(core.finish, plan)
        _complete(job, plan.model, stored, plan.extra[COMPLETION_EVENT])


def register_handlers(bus: Bus, core: Evaluator, settings: EvaluatorSettings) -> None:
    @bus.handle(ModelRegistered, ack_wait=ACK_WAIT)
    async def on_model_registered(ctx: HandlerContext[ModelRegistered]) -> None:
        require_owner(ctx.envelope, ModelRegistered)
        p = ctx.payload
        event_id = f"eval:{p.model.model_name}:{p.model.version}"
        tasks = settings.evaluator_registration_tasks or p.tasks
        await _evaluate(ctx, core, settings, registered_job_id(p.model), p.model, p.artifact, tasks, event_id)

    @bus.handle(EvaluateRequested, ack_wait=ACK_WAIT)
    async def on_evaluate_requested(ctx: HandlerContext[EvaluateRequested]) -> None:
        p = ctx.payload
        # Keyed by job too: an explicit re-evaluation (other tasks) must not be swallowed as a duplicate
        # of the registration's evaluation by the stream's Msg-Id window.
        event_id = f"eval:{p.model.model_name}:{p.model.version}:{p.job_id}"
        champion = (p.champion, p.champion_artifact) if p.champion and p.champion_artifact else None
        await _evaluate(ctx, core, settings, p.job_id, p.model, p.artifact, p.tasks, event_id, champion)

    @bus.handle(EvaluateShardRequested, ack_wait=ACK_WAIT)
    async def on_shard(ctx: HandlerContext[EvaluateShardRequested]) -> None:
        await _score_shard(ctx, core)
