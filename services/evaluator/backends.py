"""Backends: what a task asks of a model (three calls). Implementations: ``hf_backend.HFBackend``
(transformers in this process) and ``openai_backend.OpenAIBackend`` (any OpenAI-compatible server).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from services.evaluator.tasks import GenerationConfig

Progress = Callable[[int, int], None]  # (done, total)


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


class ModelLoadError(RuntimeError):
    """The model folder cannot be loaded (missing, not a causal LM, broken files)."""
