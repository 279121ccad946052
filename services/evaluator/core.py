"""The evaluator's core as one call: a model (folder or OpenAI-compatible endpoint) + task names ->
an EvalReport (no bus, no gRPC)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from services.evaluator.backends import Backend
from services.evaluator.cache import ResultCache, fingerprint_model_dir
from services.evaluator.runner import EvalReport, RunProgress, evaluate, write_report
from services.evaluator.tasks import resolve_tasks


@dataclass(frozen=True)
class ModelSpec:
    """What to evaluate: a Hugging Face folder, or a served model behind an OpenAI-compatible URL."""

    path: Path | None = None
    endpoint: str | None = None
    model_name: str | None = None
    api_key: str | None = None
    # endpoint generation through chat completions (chat models) or completions (base models)
    generation_api: Literal["chat", "completions"] = "chat"
    # a known content hash (e.g. the artifact's sha256) saves fingerprinting the folder
    sha256: str | None = None

    def __post_init__(self) -> None:
        if (self.path is None) == (self.endpoint is None):
            raise ValueError("give either a model folder or an endpoint URL (not both)")
        if self.endpoint is not None and not self.model_name:
            raise ValueError("an endpoint needs the served model's name (--model-name)")


def make_backend(
    spec: ModelSpec, *, batch_size: int = 8, num_threads: int | None = None, device: str = "cpu"
) -> tuple[Backend, str]:
    """The backend and its cache key (what identifies the model's scores)."""
    if spec.endpoint is not None:
        from services.evaluator.openai_backend import OpenAIBackend

        remote = OpenAIBackend(
            spec.endpoint, str(spec.model_name), api_key=spec.api_key, batch_size=batch_size
        )
        return remote, remote.cache_key
    from services.evaluator.hf_backend import HFBackend

    assert spec.path is not None
    local = HFBackend(spec.path, batch_size=batch_size, num_threads=num_threads, device=device)
    content = spec.sha256 or fingerprint_model_dir(spec.path)
    return local, f"hf:{content}:{local.max_length}:{local.model.dtype}"


def evaluate_model(
    model: Path | ModelSpec,
    task_names: list[str],
    *,
    data_root: Path | None = None,
    perplexity_path: Path | None = None,
    tasks_dir: Path | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    num_threads: int | None = None,
    device: str = "cpu",
    progress: RunProgress | None = None,
    cache_path: Path | None = None,
) -> EvalReport:
    """Resolve the tasks first (unknown names fail before the model is loaded), then run them."""
    spec = model if isinstance(model, ModelSpec) else ModelSpec(path=model)
    tasks = resolve_tasks(task_names, perplexity_path=perplexity_path, tasks_dir=tasks_dir)
    backend, model_key = make_backend(spec, batch_size=batch_size, num_threads=num_threads, device=device)
    cache = ResultCache(cache_path) if cache_path else None
    try:
        return evaluate(
            tasks,
            backend,
            data_root=data_root,
            limit=limit,
            progress=progress,
            cache=cache,
            model_key=model_key,
        )
    finally:
        if cache is not None:
            cache.close()


def results_key(model_name: str, version: int) -> str:
    """Where a model version's results live in the artifact store."""
    return f"evals/{model_name}/v{version}"


__all__ = ["EvalReport", "ModelSpec", "evaluate_model", "make_backend", "results_key", "write_report"]
