"""gRPC adapter: puyu.jobs.v1.Jobs for kind "evaluate" — the shared Jobs servicer, with task names
checked at submit time so a typo is an INVALID_ARGUMENT naming it rather than a failed job later."""

from __future__ import annotations

from contracts.events import EvaluateRequested
from services.evaluator.config import EvaluatorSettings
from services.evaluator.handlers import JOB_KIND
from services.evaluator.tasks import resolve_tasks
from shared.jobs_api import JobsServicer
from shared.jobs_api import add_jobs_api as add_shared_jobs_api
from shared.service import ServiceRuntime


def add_jobs_api(runtime: ServiceRuntime, settings: EvaluatorSettings | None = None) -> JobsServicer:
    tasks_dir = settings.evaluator_tasks_dir if settings else None

    def check(request: EvaluateRequested) -> None:
        resolve_tasks(
            request.tasks, tasks_dir=tasks_dir
        )  # UnknownTask (a ValueError) names every unknown one

    return add_shared_jobs_api(runtime, {JOB_KIND: EvaluateRequested}, {JOB_KIND: check})
