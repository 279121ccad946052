"""What a gateway or worker process serves with: the object ``create_service`` returns as its core."""

from __future__ import annotations

from dataclasses import dataclass

from services.inference_gateway.core.limits import Limits
from services.inference_gateway.core.pool import ModelPool
from services.inference_gateway.router import Router


@dataclass(frozen=True)
class Gateway:
    instance: str  # the name this process announces and deploys under
    router: Router  # where each request runs: a worker process, else ``pool``
    limits: Limits  # admission of OpenAI API requests
    pool: ModelPool | None  # this process's own engines; None on a gateway that only routes
