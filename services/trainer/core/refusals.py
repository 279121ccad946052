"""The trainer's refusal: a request that can never succeed as given."""

from __future__ import annotations

from shared.errors import Refusal


class TrainConfigError(Refusal, ValueError):
    """The request can never succeed as given (bad spec, unusable tokenizer, checkpoint or data).

    Still a ValueError: the gRPC submit check and the command line report ValueErrors as bad input."""
