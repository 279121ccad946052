"""gRPC adapter: ``puyu.jobs.v1.Jobs`` for kind "train" — the shared Jobs servicer, with the spec checks
that need the whole spec run at submit time (a config that cannot work is refused before any compute)."""

from __future__ import annotations

from contracts.events import TrainRequested
from services.trainer.core.run import validate
from shared.jobs_api import JobsServicer, add_jobs_api
from shared.service import ServiceRuntime

KIND = "train"


def _check(request: TrainRequested) -> None:
    validate(request.spec)  # TrainConfigError (a ValueError) names the problem


def add_train_jobs_api(runtime: ServiceRuntime) -> JobsServicer:
    return add_jobs_api(runtime, {KIND: TrainRequested}, {KIND: _check})
