"""Task definitions as data: what to load, how to prompt, how to score.

A task is a pydantic model, so a new benchmark is a new config (later: YAML files), not new code.
``version_hash`` fingerprints everything that changes the score (prompts, loader, decoding,
metric), but not where the data lives on this machine, so results stay comparable across runs.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

OutputType = Literal["perplexity", "multiple_choice", "generation"]
LoaderKind = Literal["sample_heldout", "sample_facts", "text_file", "gsm8k", "cmmlu"]
ExtractorKind = Literal["first_word", "gsm8k_strict"]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LoaderConfig(_Frozen):
    kind: LoaderKind
    # For data-folder datasets: relative to the data root (so the hash does not depend on the machine).
    path: str | None = None
    split: str = "test"
    num_samples: int | None = Field(default=None, ge=1, description="Generated / taken samples (sample_*).")
    subjects: list[str] | None = Field(default=None, description="cmmlu: subset of subjects; None: all.")


class GenerationConfig(_Frozen):
    max_new_tokens: int = Field(default=32, ge=1)
    stop: list[str] = Field(default_factory=list, description="Cut the continuation at the first of these.")


class TaskConfig(_Frozen):
    name: str
    description: str = ""
    loader: LoaderConfig
    output_type: OutputType
    # str.format templates over the sample's fields.
    prompt_template: str = "{prompt}"
    target_field: str = "target"
    # multiple_choice: the continuations scored after the prompt; the sample's `gold` is the index.
    choices: list[str] = Field(default_factory=list)
    num_fewshot: int = Field(default=0, ge=0)
    fewshot_target_template: str = Field(default=" {target}", description="Appended to a few-shot prompt.")
    fewshot_separator: str = "\n\n"
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    extractor: ExtractorKind | None = None
    metrics: list[str]
    primary_metric: str
    higher_is_better: bool = True

    @property
    def version_hash(self) -> str:
        canonical = json.dumps(self.model_dump(mode="json", exclude={"description"}), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()


class UnknownTask(ValueError):
    """A task name that is not defined."""


def _builtin_tasks(perplexity_path: str | None = None) -> dict[str, TaskConfig]:
    ppl_loader = (
        LoaderConfig(kind="text_file", path=perplexity_path)
        if perplexity_path
        else LoaderConfig(kind="sample_heldout", num_samples=64)
    )
    tasks = [
        TaskConfig(
            name="perplexity",
            description="Token-weighted perplexity on held-out text.",
            loader=ppl_loader,
            output_type="perplexity",
            prompt_template="{text}",
            metrics=["perplexity", "bits_per_byte", "nll_per_token"],
            primary_metric="perplexity",
            higher_is_better=False,
        ),
        TaskConfig(
            name="demo_facts",
            description="Greedy continuation of fact prompts of the sample world; first word must match.",
            loader=LoaderConfig(kind="sample_facts"),
            output_type="generation",
            prompt_template="{prompt}",
            generation=GenerationConfig(max_new_tokens=8, stop=["\n"]),
            extractor="first_word",
            metrics=["accuracy"],
            primary_metric="accuracy",
        ),
        TaskConfig(
            name="gsm8k",
            description="Grade-school maths, strict '#### <number>' extraction, exact match.",
            loader=LoaderConfig(kind="gsm8k", path="gsm8k", split="test"),
            output_type="generation",
            prompt_template="Question: {question}\nAnswer:",
            num_fewshot=4,
            fewshot_target_template=" {answer}",
            generation=GenerationConfig(max_new_tokens=256, stop=["Question:", "\n\n"]),
            extractor="gsm8k_strict",
            metrics=["exact_match"],
            primary_metric="exact_match",
        ),
        TaskConfig(
            name="cmmlu",
            description="Chinese multiple-choice exams; loglikelihood of the answer letter.",
            loader=LoaderConfig(kind="cmmlu", path="cmmlu", split="test"),
            output_type="multiple_choice",
            prompt_template="{question}\nA. {A}\nB. {B}\nC. {C}\nD. {D}\n答案：",
            choices=["A", "B", "C", "D"],
            num_fewshot=0,
            fewshot_target_template="{target}",
            metrics=["accuracy"],
            primary_metric="accuracy",
        ),
    ]
    return {t.name: t for t in tasks}


BUILTIN_TASK_NAMES = tuple(_builtin_tasks())


def get_task(name: str, *, perplexity_path: str | Path | None = None) -> TaskConfig:
    tasks = _builtin_tasks(str(perplexity_path) if perplexity_path else None)
    if name not in tasks:
        raise UnknownTask(f"unknown task {name!r} (known: {', '.join(sorted(tasks))})")
    return tasks[name]


def resolve_tasks(names: list[str], *, perplexity_path: str | Path | None = None) -> list[TaskConfig]:
    """All tasks by name; raises UnknownTask naming every unknown one (before any work starts)."""
    unknown = [n for n in names if n not in BUILTIN_TASK_NAMES]
    if unknown:
        raise UnknownTask(
            f"unknown task(s) {', '.join(map(repr, unknown))} (known: {', '.join(BUILTIN_TASK_NAMES)})"
        )
    if not names:
        raise UnknownTask("no tasks requested")
    return [get_task(n, perplexity_path=perplexity_path) for n in dict.fromkeys(names)]
