"""gRPC adapter: ``puyu.jobs.v1.Jobs`` for finetune jobs: the shared Jobs servicer, refusing at submit
time, with the core's reason, a method (or ZeRO stage) this build or machine cannot run."""

from __future__ import annotations

from contracts.events import FinetuneRequested
from services.finetuner.core import validate
from services.finetuner.handlers import JOB_KIND
from shared.jobs_api import JobsServicer, add_jobs_api
from shared.service import ServiceRuntime


def check_request(request: FinetuneRequested) -> None:
    validate(request.spec)  # the spec alone: the inputs are fetched when the job runs


def add_finetune_jobs_api(runtime: ServiceRuntime) -> JobsServicer:
    return add_jobs_api(runtime, {JOB_KIND: FinetuneRequested}, {JOB_KIND: check_request})
