"""The evaluator's refusals: requests that can never succeed as asked (an unknown task, a model that
cannot be loaded, data absent on this replica). The bus rejects them without retries, gRPC answers
INVALID_ARGUMENT; anything else is a failure worth retrying."""

from __future__ import annotations

from shared.errors import Refusal


class EvaluatorRefusal(Refusal):
    """An evaluation request that cannot succeed as asked."""


class ModelUnavailable(EvaluatorRefusal):
    """The model version's artifact is not in the artifact store."""


class NothingToEvaluate(EvaluatorRefusal):
    """No requested task could run (the data of every one is absent)."""


class ShardRefused(EvaluatorRefusal):
    """A shard this replica cannot score as asked (an empty range, another definition of the task, a
    job without a stored plan)."""


class InvalidModelSpec(EvaluatorRefusal, ValueError):
    """Neither or both of a model folder and an endpoint, or an endpoint without a model name."""
