"""gRPC adapter: ``puyu.jobs.v1.Jobs`` for kind "train": the shared Jobs servicer, with the core's
checks run at submit time (a config that cannot work, or a launcher that cannot take runs, is
refused before any compute)."""

from __future__ import annotations

from contracts.events import TrainRequested
from services.trainer.core import Trainer, validate
from services.trainer.handlers import KIND
from shared.jobs_api import JobsServicer, add_jobs_api
from shared.service import ServiceRuntime


def check_request(request: TrainRequested) -> None:
    validate(request.spec)  # TrainConfigError (a Refusal and a ValueError) names the problem


def add_train_jobs_api(runtime: ServiceRuntime, core: Trainer) -> JobsServicer:
    def check(request: TrainRequested) -> None:
        core.check_submit(request.spec, request.datasets)  # inputs, spec at the launch's world size, launcher

    return add_jobs_api(runtime, {KIND: TrainRequested}, {KIND: check})
