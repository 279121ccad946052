"""Backends: what a task asks of a model (three calls), and which backend serves a model spec.

Implementations: ``hf_backend.HFBackend`` (transformers in this process) and
``openai_backend.OpenAIBackend`` (any OpenAI-compatible server); both are imported only when used,
so planning and the endpoint path need no torch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from services.evaluator.config import ModelDType
from services.evaluator.core.cache import fingerprint_model_dir
from services.evaluator.core.errors import EvaluatorRefusal, InvalidModelSpec
from services.evaluator.core.tasks import GenerationConfig

Progress = Callable[[int, int], None]  # (done, total)
Message = dict[str, str]  # {"role": ..., "content": ...}


@dataclass(frozen=True)
class Loglikelihood:
    logprob: float  # sum of log p(continuation tokens | context)
    is_greedy: bool  # every continuation token was the argmax


@dataclass(frozen=True)
class RollingLoglikelihood:
    logprob: float  # sum over every scored token of the text
    num_tokens: int


class Backend(Protocol):
    def loglikelihood(
        self, requests: Sequence[tuple[str, str]], progress: Progress | None = None
    ) -> list[Loglikelihood]: ...

    def loglikelihood_rolling(
        self, texts: Sequence[str], progress: Progress | None = None
    ) -> list[RollingLoglikelihood]: ...

    def generate(
        self, prompts: Sequence[str], config: GenerationConfig, progress: Progress | None = None
    ) -> list[str]: ...


class ChatBackend(Backend, Protocol):
    """A backend that can ask a chat model in turns. ``chat_format`` names how the turns are
    rendered (the chat template's hash in process; the served model's template behind an endpoint),
    None when the model has no template (then prompts go as plain text)."""

    chat_format: str | None

    def generate_chat(
        self,
        conversations: Sequence[list[Message]],
        config: GenerationConfig,
        progress: Progress | None = None,
    ) -> list[str]: ...


def chat_format_of(backend: Backend) -> str | None:
    """The backend's chat format (None for backends without chat turns, e.g. scripted test ones)."""
    fmt = getattr(backend, "chat_format", None)
    return fmt if isinstance(fmt, str) and callable(getattr(backend, "generate_chat", None)) else None


class ModelLoadError(EvaluatorRefusal):
    """The model folder cannot be loaded (missing, not a causal LM, broken files)."""


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
            raise InvalidModelSpec("give either a model folder or an endpoint URL (not both)")
        if self.endpoint is not None and not self.model_name:
            raise InvalidModelSpec("an endpoint needs the served model's name (--model-name)")


def make_backend(
    spec: ModelSpec,
    *,
    batch_size: int = 8,
    num_threads: int | None = None,
    device: str = "cpu",
    dtype: ModelDType = "auto",
) -> tuple[Backend, str]:
    """The backend and its cache key (what identifies the model's scores). A folder's key holds the
    dtype the model was loaded in (``auto`` resolved), so scores of one precision are never served
    for another; ``dtype`` is the served model's business behind an endpoint."""
    if spec.endpoint is not None:
        from services.evaluator.core.openai_backend import OpenAIBackend

        remote = OpenAIBackend(
            spec.endpoint,
            str(spec.model_name),
            api_key=spec.api_key,
            batch_size=batch_size,
            generation_api=spec.generation_api,
        )
        return remote, remote.cache_key
    from services.evaluator.core.hf_backend import HFBackend

    assert spec.path is not None
    local = HFBackend(spec.path, batch_size=batch_size, num_threads=num_threads, device=device, dtype=dtype)
    content = spec.sha256 or fingerprint_model_dir(spec.path)
    return local, f"hf:{content}:{local.max_length}:{local.model.dtype}"
