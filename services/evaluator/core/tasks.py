"""Task definitions as data: what to load, how to prompt, how to score.

A task is a pydantic model, so a new benchmark is a new config, not new code: built-in ones are
defined below, others are YAML files (``load_task_file``) over local jsonl / csv / parquet data.
``version_hash`` fingerprints everything that changes the score (prompts, loader, decoding,
metric), but not where the data lives on this machine, so results stay comparable across runs.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from services.evaluator.core.errors import EvaluatorRefusal

OutputType = Literal["perplexity", "multiple_choice", "generation", "code_execution"]
LoaderKind = Literal[
    "sample_heldout", "sample_facts", "text_file", "gsm8k", "cmmlu", "humaneval", "jsonl", "csv", "parquet"
]
ExtractorKind = Literal["first_word", "gsm8k_strict", "gsm8k_flexible", "choice_letter"]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LoaderConfig(_Frozen):
    kind: LoaderKind
    # For data-folder datasets: relative to the data root (so the hash does not depend on the machine).
    path: str | None = None
    split: str = "test"
    num_samples: int | None = Field(default=None, ge=1, description="Generated / taken samples (sample_*).")
    subjects: list[str] | None = Field(default=None, description="cmmlu: subset of subjects; None: all.")
    id_field: str | None = Field(default=None, description="jsonl/csv/parquet: the sample id column.")
    fewshot_path: str | None = Field(default=None, description="jsonl/csv/parquet: the few-shot pool file.")


class GenerationConfig(_Frozen):
    max_new_tokens: int = Field(default=32, ge=1)
    stop: list[str] = Field(default_factory=list, description="Cut the continuation at the first of these.")


class ExecutionConfig(_Frozen):
    timeout_s: float = Field(default=10.0, gt=0)
    memory_mb: int = Field(default=1024, ge=64)


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
    # More exact-match metrics over the same generations: metric name -> extractor.
    extra_extractors: dict[str, ExtractorKind] = Field(default_factory=dict)
    execution: ExecutionConfig = Field(default_factory=ExecutionConfig)
    metrics: list[str]
    primary_metric: str
    higher_is_better: bool = True

    @property
    def version_hash(self) -> str:
        data = self.model_dump(mode="json", exclude={"description"})
        # fields added later count only when set, so existing tasks keep their hash (and comparability)
        for name in _LATER_FIELDS:
            if getattr(self, name) == TaskConfig.model_fields[name].get_default(call_default_factory=True):
                data.pop(name, None)
        for name in _LATER_LOADER_FIELDS:
            if data["loader"].get(name) is None:
                data["loader"].pop(name, None)
        canonical = json.dumps(data, sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()


_LATER_FIELDS = ("extra_extractors", "execution")
_LATER_LOADER_FIELDS = ("id_field", "fewshot_path")


class UnknownTask(EvaluatorRefusal, ValueError):
    """A task name that is not defined, or a task file that cannot be read (a ValueError too: the
    shared Jobs API answers ValueErrors of a submit check with INVALID_ARGUMENT)."""


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
            description="Grade-school maths, 4-shot chain of thought (train solutions); strict '#### <n>' "
            "and flexible (last number) extraction, exact match.",
            loader=LoaderConfig(kind="gsm8k", path="gsm8k", split="test"),
            output_type="generation",
            prompt_template="Question: {question}\nAnswer:",
            num_fewshot=4,
            fewshot_target_template=" {answer}",
            generation=GenerationConfig(max_new_tokens=256, stop=["Question:", "\n\n"]),
            extractor="gsm8k_strict",
            extra_extractors={"exact_match_flexible": "gsm8k_flexible"},
            metrics=["exact_match", "exact_match_flexible"],
            primary_metric="exact_match",
        ),
        *_cmmlu_tasks(),
        TaskConfig(
            name="humaneval",
            description="HumanEval pass@1: greedy completion of the function, run against its tests in the "
            "sandbox (separate process, time and memory limits, no network, temporary directory).",
            loader=LoaderConfig(kind="humaneval", path="humaneval/HumanEval.jsonl.gz"),
            output_type="code_execution",
            prompt_template="{prompt}",
            generation=GenerationConfig(
                max_new_tokens=384, stop=["\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#"]
            ),
            metrics=["pass@1"],
            primary_metric="pass@1",
        ),
    ]
    return {t.name: t for t in tasks}


def _cmmlu_tasks() -> list[TaskConfig]:
    """CMMLU as OpenCompass runs it: ppl mode (loglikelihood of each option letter) and gen mode
    (generated answer, first option letter extracted), each 0-shot and 5-shot (dev split)."""
    prompt = "{question}\nA. {A}\nB. {B}\nC. {C}\nD. {D}\n答案："
    loader = LoaderConfig(kind="cmmlu", path="cmmlu", split="test")
    out = []
    for shots in (0, 5):
        suffix = "" if shots == 0 else "_5shot"
        out.append(
            TaskConfig(
                name=f"cmmlu{suffix}",
                description=f"CMMLU, {shots}-shot, ppl mode: loglikelihood of the answer letter.",
                loader=loader,
                output_type="multiple_choice",
                prompt_template=prompt,
                choices=["A", "B", "C", "D"],
                num_fewshot=shots,
                fewshot_target_template="{target}",
                metrics=["accuracy"],
                primary_metric="accuracy",
            )
        )
        out.append(
            TaskConfig(
                name=f"cmmlu_gen{suffix}",
                description=f"CMMLU, {shots}-shot, gen mode: the first option letter of a greedy answer.",
                loader=loader,
                output_type="generation",
                prompt_template=prompt,
                num_fewshot=shots,
                fewshot_target_template="{target}",
                generation=GenerationConfig(max_new_tokens=8, stop=["\n"]),
                extractor="choice_letter",
                metrics=["accuracy"],
                primary_metric="accuracy",
            )
        )
    return out


BUILTIN_TASK_NAMES = tuple(_builtin_tasks())


def load_task_file(path: Path) -> TaskConfig:
    """A task defined in YAML (the fields of TaskConfig); errors name the file and the field."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise UnknownTask(f"cannot read task file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise UnknownTask(f"task file {path}: expected a mapping of TaskConfig fields")
    data.setdefault("name", path.stem)
    try:
        return TaskConfig.model_validate(data)
    except ValueError as exc:
        raise UnknownTask(f"task file {path}: {exc}") from exc


def available_tasks(
    *, perplexity_path: str | Path | None = None, tasks_dir: Path | None = None
) -> dict[str, TaskConfig | Path]:
    """Built-in tasks, then ``tasks_dir/*.yaml`` (parsed lazily: a broken file fails only when used)."""
    tasks: dict[str, TaskConfig | Path] = dict(
        _builtin_tasks(str(perplexity_path) if perplexity_path else None)
    )
    if tasks_dir is not None and tasks_dir.is_dir():
        for file in sorted([*tasks_dir.glob("*.yaml"), *tasks_dir.glob("*.yml")]):
            tasks.setdefault(file.stem, file)
    return tasks


def get_task(
    name: str, *, perplexity_path: str | Path | None = None, tasks_dir: Path | None = None
) -> TaskConfig:
    """A task by name, or by the path of a YAML task file."""
    if name.endswith((".yaml", ".yml")):
        return load_task_file(Path(name))
    tasks = available_tasks(perplexity_path=perplexity_path, tasks_dir=tasks_dir)
    if name not in tasks:
        raise UnknownTask(f"unknown task {name!r} (known: {', '.join(sorted(tasks))})")
    task = tasks[name]
    return load_task_file(task) if isinstance(task, Path) else task


def resolve_tasks(
    names: list[str], *, perplexity_path: str | Path | None = None, tasks_dir: Path | None = None
) -> list[TaskConfig]:
    """All tasks by name; raises UnknownTask naming every unknown one (before any work starts)."""
    if not names:
        raise UnknownTask("no tasks requested")
    known = available_tasks(perplexity_path=perplexity_path, tasks_dir=tasks_dir)
    unknown = [n for n in names if n not in known and not n.endswith((".yaml", ".yml"))]
    if unknown:
        raise UnknownTask(f"unknown task(s) {', '.join(map(repr, unknown))} (known: {', '.join(known)})")
    return [get_task(n, perplexity_path=perplexity_path, tasks_dir=tasks_dir) for n in dict.fromkeys(names)]
