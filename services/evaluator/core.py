"""The evaluator's core as one call: a model folder + task names -> an EvalReport (no bus, no gRPC)."""

from __future__ import annotations

from pathlib import Path

from services.evaluator.backends import HFBackend
from services.evaluator.runner import EvalReport, RunProgress, evaluate, write_report
from services.evaluator.tasks import resolve_tasks


def evaluate_model(
    model_path: Path,
    task_names: list[str],
    *,
    data_root: Path | None = None,
    perplexity_path: Path | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    num_threads: int | None = None,
    device: str = "cpu",
    progress: RunProgress | None = None,
) -> EvalReport:
    """Resolve the tasks first (unknown names fail before the model is loaded), then run them."""
    tasks = resolve_tasks(task_names, perplexity_path=perplexity_path)
    backend = HFBackend(model_path, batch_size=batch_size, num_threads=num_threads, device=device)
    return evaluate(tasks, backend, data_root=data_root, limit=limit, progress=progress)


def results_key(model_name: str, version: int) -> str:
    """Where a model version's results live in the artifact store."""
    return f"evals/{model_name}/v{version}"


__all__ = ["EvalReport", "evaluate_model", "results_key", "write_report"]
