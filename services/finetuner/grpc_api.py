"""gRPC adapter: ``puyu.jobs.v1.Jobs`` for finetune and quantize jobs: the shared Jobs servicer (the
operator's Submit, authenticated and authorised there), refusing at submit time, with the core's reason,
a method (or ZeRO stage) this build or machine cannot run, or a quantisation spec that cannot succeed."""

from __future__ import annotations

from contracts.events import FinetuneRequested, QuantizeRequested
from services.finetuner.core import check_spec, validate
from services.finetuner.handlers import JOB_KIND
from services.finetuner.quantize_handlers import QUANTIZE_KIND
from shared.errors import Refusal
from shared.jobs_api import JobsServicer, add_jobs_api
from shared.service import ServiceRuntime


def check_request(request: FinetuneRequested) -> None:
    validate(request.spec)  # the spec alone: the inputs are fetched when the job runs


def check_quantize_request(request: QuantizeRequested) -> None:
    try:  # the spec and whether calibration is named; the folder and the data are read when it runs
        check_spec(request.spec, request.calibration_uri)
    except Refusal as exc:  # the Jobs servicer reports ValueErrors as INVALID_ARGUMENT
        raise ValueError(str(exc)) from exc


def add_finetune_jobs_api(runtime: ServiceRuntime) -> JobsServicer:
    return add_jobs_api(
        runtime,
        {JOB_KIND: FinetuneRequested, QUANTIZE_KIND: QuantizeRequested},
        {JOB_KIND: check_request, QUANTIZE_KIND: check_quantize_request},
    )
