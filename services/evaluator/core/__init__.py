"""The evaluator's core: plain Python, no bus, gRPC or HTTP.

``evaluator.Evaluator`` is what the adapters and ``puyu eval`` call; ``evaluate_model`` is the same
work as one call. Behind them: ``tasks`` (benchmarks as data), ``loaders`` (their samples),
``backends`` (what a task asks of a model; ``hf_backend`` in process, ``openai_backend`` over HTTP),
``runner`` (samples scored, metrics aggregated, reports written), ``metrics``, ``sandbox`` (generated
code run in isolation), ``cache`` (per-sample results) and ``sharding`` (a run as work items).
Refusals subclass ``errors.EvaluatorRefusal`` (a ``shared.errors.Refusal``).
"""

from services.evaluator.core.backends import ModelLoadError, ModelSpec
from services.evaluator.core.errors import (
    EvaluatorRefusal,
    InvalidModelSpec,
    ModelUnavailable,
    NothingToEvaluate,
    ShardRefused,
)
from services.evaluator.core.evaluator import Evaluator, StoredEvaluation, evaluate_model, results_key
from services.evaluator.core.loaders import DataUnavailable
from services.evaluator.core.runner import EvalReport, TaskOutcome, write_report
from services.evaluator.core.sharding import ShardPlan, ShardWork
from services.evaluator.core.tasks import TaskConfig, UnknownTask

__all__ = [
    "DataUnavailable",
    "EvalReport",
    "Evaluator",
    "EvaluatorRefusal",
    "InvalidModelSpec",
    "ModelLoadError",
    "ModelSpec",
    "ModelUnavailable",
    "NothingToEvaluate",
    "ShardPlan",
    "ShardRefused",
    "ShardWork",
    "StoredEvaluation",
    "TaskConfig",
    "TaskOutcome",
    "UnknownTask",
    "evaluate_model",
    "results_key",
    "write_report",
]
