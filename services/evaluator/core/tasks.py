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
from pydantic import BaseModel, ConfigDict, Field, model_validator

from services.evaluator.core.errors import EvaluatorRefusal

OutputType = Literal["perplexity", "multiple_choice", "generation", "code_execution", "judged", "pairwise"]
# Output types whose prompts go through a chat model's template (as OpenCompass's chat configs do).
CHAT_OUTPUT_TYPES = ("generation", "judged", "pairwise")
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
    # Sampling (pass@k needs n samples per problem); the defaults are greedy, one answer.
    num_samples: int = Field(default=1, ge=1, description="Answers per prompt (pass@k's n).")
    temperature: float = Field(default=0.0, ge=0.0, le=2.0, description="0: greedy.")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int = Field(default=1234, description="Sampling seed (answers reproduce run to run).")

    @property
    def sampling(self) -> bool:
        return self.temperature > 0.0

    def hash_fields(self) -> dict[str, object]:
        """The fields as hashed: sampling fields count only when set (older tasks keep their hash)."""
        data = self.model_dump(mode="json")
        for name in _LATER_GENERATION_FIELDS:
            if data[name] == GenerationConfig.model_fields[name].get_default():
                data.pop(name)
        if not self.sampling:
            data.pop("seed", None)
        return data


_LATER_GENERATION_FIELDS = ("num_samples", "temperature", "top_p", "seed")


class ExecutionConfig(_Frozen):
    timeout_s: float = Field(default=10.0, gt=0)
    memory_mb: int = Field(default=1024, ge=64)


class JudgeConfig(_Frozen):
    """What the judge is asked. Which judge answers (URL, model, API key) is the deployment's
    business (``PUYU_EVALUATOR_JUDGE_*``), never a task file's."""

    rubric: str | None = Field(
        default=None,
        description="Judge prompt (str.format over question, answer / answer_a, answer_b, reference); "
        "None: the MT-Bench-style prompt of the output type.",
    )
    system_prompt: str | None = None
    reference_field: str | None = Field(default=None, description="The sample field with a reference answer.")
    max_new_tokens: int = Field(default=512, ge=1)
    max_parse_attempts: int = Field(
        default=3, ge=1, le=10, description="Asks per verdict when the answer holds none."
    )
    pass_rating: int = Field(default=6, ge=1, le=10, description="judged: a rating at least this passes.")
    calibration_path: str | None = Field(
        default=None,
        description="Labelled judge examples (jsonl; relative to the task file or the data root): "
        "agreement with their gold verdicts is reported as judge_agreement.",
    )


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
    # Chat models: "auto" renders generation-type prompts through the model's chat template (a system
    # turn, few-shot examples as earlier user/assistant turns); "never" sends the plain text.
    chat: Literal["auto", "never"] = "auto"
    system_prompt: str | None = None
    judge: JudgeConfig | None = Field(default=None, description="judged / pairwise: what the judge is asked.")
    metrics: list[str]
    primary_metric: str
    higher_is_better: bool = True

    @model_validator(mode="after")
    def _consistent(self) -> TaskConfig:
        if self.primary_metric not in self.metrics:
            raise ValueError(f"primary_metric {self.primary_metric!r} is not one of metrics {self.metrics}")
        if self.output_type == "code_execution":
            for name in self.metrics:
                k = int(name.split("@", 1)[1]) if name.startswith("pass@") and name[5:].isdigit() else None
                if k is None:
                    raise ValueError(f"code_execution metrics are pass@k, not {name!r}")
                if k > self.generation.num_samples:
                    raise ValueError(
                        f"{name} needs at least {k} samples per problem (generation.num_samples is "
                        f"{self.generation.num_samples})"
                    )
        allowed = _JUDGED_METRICS.get(self.output_type)
        if allowed is not None and not set(self.metrics) <= allowed:
            raise ValueError(f"{self.output_type} metrics are among {sorted(allowed)}, not {self.metrics}")
        return self

    @property
    def version_hash(self) -> str:
        data = self.model_dump(mode="json", exclude={"description"})
        data["generation"] = self.generation.hash_fields()
        # fields added later count only when set, so existing tasks keep their hash (and comparability)
        for name in _LATER_FIELDS:
            if getattr(self, name) == TaskConfig.model_fields[name].get_default(call_default_factory=True):
                data.pop(name, None)
        for name in _LATER_LOADER_FIELDS:
            if data["loader"].get(name) is None:
                data["loader"].pop(name, None)
        canonical = json.dumps(data, sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()


_JUDGED_METRICS = {
    "judged": {"judge_score", "judge_pass_rate"},
    "pairwise": {"win_rate", "position_consistency"},
}
_LATER_FIELDS = ("extra_extractors", "execution", "chat", "system_prompt", "judge")
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
        *_judged_tasks(),
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


def _judged_tasks() -> list[TaskConfig]:
    """The sample world's capitals asked of a chat model and judged against the reference: rated
    alone (MT-Bench single grading) and head-to-head with the champion (pairwise, both orders)."""
    loader = LoaderConfig(kind="sample_facts")
    generation = GenerationConfig(max_new_tokens=24, stop=["\n"])
    return [
        TaskConfig(
            name="judged_facts",
            description="Capitals of the sample world, each answer rated 1..10 by the judge against the "
            "reference; judge_pass_rate: rated at least 6.",
            loader=loader,
            output_type="judged",
            prompt_template="{prompt}",
            generation=generation,
            judge=JudgeConfig(calibration_path="facts_single.jsonl"),
            metrics=["judge_score", "judge_pass_rate"],
            primary_metric="judge_score",
        ),
        TaskConfig(
            name="pairwise_facts",
            description="Capitals of the sample world, the candidate's answer against the champion's, "
            "judged in both orders; win_rate counts ties as half.",
            loader=loader,
            output_type="pairwise",
            prompt_template="{prompt}",
            generation=generation,
            judge=JudgeConfig(calibration_path="facts_pairwise.jsonl"),
            metrics=["win_rate", "position_consistency"],
            primary_metric="win_rate",
        ),
    ]


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
