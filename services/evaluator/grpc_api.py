"""gRPC adapter: puyu.jobs.v1.Jobs for kind "evaluate" — the shared Jobs servicer, with task names
checked at submit time so a typo is an INVALID_ARGUMENT naming it rather than a failed job later."""

from __future__ import annotations

from contracts.events import EvaluateRequested
from services.evaluator.core import Evaluator
from services.evaluator.handlers import JOB_KIND
from shared.jobs_api import JobsServicer
from shared.jobs_api import add_jobs_api as add_shared_jobs_api
from shared.service import ServiceRuntime


def add_jobs_api(runtime: ServiceRuntime, core: Evaluator) -> JobsServicer:
    def check(request: EvaluateRequested) -> None:
        core.check_tasks(request.tasks)  # UnknownTask (a ValueError) names every unknown one

    return add_shared_jobs_api(runtime, {JOB_KIND: EvaluateRequested}, {JOB_KIND: check})
