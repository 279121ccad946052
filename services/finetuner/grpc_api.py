"""gRPC adapter: ``puyu.jobs.v1.Jobs`` for finetune jobs — the shared Jobs servicer, refusing at submit
time, with the reason, a method (or ZeRO stage) this build or machine cannot run."""

from __future__ import annotations

from contracts.events import FinetuneRequested
from services.finetuner.engine import check_zero
from services.finetuner.handlers import JOB_KIND
from services.finetuner.methods import check_method
from shared.jobs_api import JobsServicer, add_jobs_api
from shared.service import ServiceRuntime


def _check(request: FinetuneRequested) -> None:
    check_method(request.spec.method)  # UnsupportedRequest (a ValueError) says why
    check_zero(request.spec)


def add_finetune_jobs_api(runtime: ServiceRuntime) -> JobsServicer:
    return add_jobs_api(runtime, {JOB_KIND: FinetuneRequested}, {JOB_KIND: _check})
