"""Evaluator settings (``PUYU_EVALUATOR_*`` environment variables)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr

from shared.settings import CommonSettings

# The precisions a model folder can be evaluated in (shared.hf_models.resolve_dtype's names).
ModelDType = Literal["auto", "bfloat16", "float16", "float32"]


def default_data_dir() -> Path:
    # DESIGN.md: real benchmark data lives in ../shared/data beside the checkout.
    return (Path.cwd().parent / "shared" / "data").resolve()


class EvaluatorSettings(CommonSettings):
    evaluator_data_dir: Path = Field(
        default_factory=default_data_dir, description="Root of benchmark data (gsm8k/, cmmlu/)."
    )
    evaluator_perplexity_path: Path | None = Field(
        default=None,
        description="jsonl/txt file or folder for the perplexity task; default: held-out samples.",
    )
    evaluator_batch_size: int = Field(default=8, ge=1)
    evaluator_num_threads: int | None = Field(
        default=None, ge=1, description="torch threads; None: torch's default."
    )
    evaluator_device: str = "cpu"
    evaluator_dtype: ModelDType = Field(
        default="auto",
        description="Precision of in-process models: auto = the checkpoint's dtype on CUDA; on the CPU "
        "bf16 where the processor multiplies it natively, else fp32.",
    )
    evaluator_limit: int | None = Field(default=None, ge=1, description="Samples per task (None: all).")
    evaluator_tasks_dir: Path | None = Field(
        default=None, description="Folder of YAML task files, usable by name beside the built-in tasks."
    )
    evaluator_cache_path: Path | None = Field(
        default=None,
        description="SQLite per-sample result cache; default: <PUYU_HOME>/evaluator/cache.sqlite "
        "(PUYU_EVALUATOR_NO_CACHE=1 disables it).",
    )
    evaluator_no_cache: bool = False
    evaluator_shard_size: int | None = Field(
        default=None,
        ge=1,
        description="Split each run into shards of this many samples per task, taken from the bus by any "
        "evaluator replica (None: the replica that gets the request runs it whole).",
    )

    # The judge of judged and pairwise tasks: any OpenAI-compatible chat endpoint (a puyu-served model
    # too). Deployment settings, never part of a task file (the key least of all).
    evaluator_judge_url: str | None = Field(default=None, description="Base URL of the judge's server.")
    evaluator_judge_model: str | None = Field(default=None, description="The judge's served model name.")
    evaluator_judge_api_key: SecretStr | None = None
    evaluator_judge_timeout_s: float = Field(default=120.0, gt=0)
    evaluator_judge_retries: int = Field(
        default=4, ge=0, description="Retries of a judge request (down, 5xx, 429 after its Retry-After)."
    )
    evaluator_judge_concurrency: int = Field(default=4, ge=1)
    evaluator_registration_tasks: list[str] | None = Field(
        default=None,
        description="Tasks every registered version is evaluated on, e.g. a pairwise task the promotion "
        "policy gates on (JSON list); None: the tasks its registration names.",
    )
    evaluator_registry_timeout_s: float = Field(
        default=10.0, gt=0, description="How long the champion lookup of a pairwise task may take."
    )

    def cache_file(self) -> Path | None:
        if self.evaluator_no_cache:
            return None
        return self.evaluator_cache_path or self.home / "evaluator" / "cache.sqlite"
