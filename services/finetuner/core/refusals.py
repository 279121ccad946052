"""The finetuner's refusals: requests that can never succeed as asked, each naming the problem.

They are ``shared.errors.Refusal`` (the bus rejects the job at once, without retries) and stay
ValueErrors, which the gRPC submit check and the command line report as bad input.
"""

from __future__ import annotations

from pathlib import Path

from shared.errors import Refusal


class FinetuneRefusal(Refusal, ValueError):
    """The finetune request cannot succeed as asked."""


class UnsupportedRequest(FinetuneRefusal):
    """The request asks for something this build or machine cannot do (method, device, ZeRO stage)."""


class InvalidInput(FinetuneRefusal):
    """An input of the request is missing or not what it must be (the base model folder)."""


class DataError(InvalidInput):
    """The data file is unusable; ``errors`` lists every problem found."""

    def __init__(self, source: str | Path, errors: list[str]) -> None:
        self.errors = errors
        shown = "; ".join(errors[:5]) + (f" (+{len(errors) - 5} more)" if len(errors) > 5 else "")
        super().__init__(f"{source}: {shown}")
