"""gRPC adapter: ``puyu.jobs.v1.Jobs`` for finetune jobs — the shared Jobs servicer, refusing at submit
time, with the reason, a method this build or machine cannot run."""

from __future__ import annotations

from contracts.events import FinetuneRequested
from services.finetuner.handlers import JOB_KIND
from services.finetuner.methods import check_method
from shared.jobs_api import JobsServicer, add_jobs_api
from shared.service import ServiceRuntime


def _check(request: FinetuneRequested) -> None:
    check_method(request.spec.method)  # UnsupportedRequest (a ValueError) says why


def add_finetune_jobs_api(runtime: ServiceRuntime) -> JobsServicer:
    return add_jobs_api(runtime, {JOB_KIND: FinetuneRequested}, {JOB_KIND: _check})
