"""The runner: task config + backend -> scored samples -> metrics, and the results on disk.

Each task is run as one unit over its samples (the seam for later sharding and caching: a shard is
a slice of ``dataset.samples``; a cache key is (model sha, task version_hash, sample id)).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.evaluator.backends import Backend
from services.evaluator.loaders import Dataset, DataUnavailable, Sample, load
from services.evaluator.metrics import EXTRACTORS, mean, normalize_number, perplexity_metrics
from services.evaluator.tasks import TaskConfig

log = logging.getLogger(__name__)

# (stage, fraction of the whole run, message)
RunProgress = Callable[[str, float, str], None]


@dataclass
class TaskOutcome:
    task: TaskConfig
    metrics: dict[str, float]
    num_samples: int
    details: list[dict[str, Any]]
    seconds: float = 0.0

    def summary_row(self) -> dict[str, Any]:
        return {
            "task": self.task.name,
            "metrics": self.metrics,
            "primary_metric": self.task.primary_metric,
            "higher_is_better": self.task.higher_is_better,
            "version_hash": self.task.version_hash,
            "num_samples": self.num_samples,
        }


@dataclass
class EvalReport:
    outcomes: list[TaskOutcome] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def summary(self) -> dict[str, dict[str, float]]:
        return {o.task.name: o.metrics for o in self.outcomes}


def build_prompt(task: TaskConfig, dataset: Dataset, sample: Sample) -> str:
    shots = [
        task.prompt_template.format(**ex) + task.fewshot_target_template.format(**ex)
        for ex in dataset.fewshot_for(sample, task.num_fewshot)
    ]
    return task.fewshot_separator.join([*shots, task.prompt_template.format(**sample)])


def run_task(
    task: TaskConfig,
    backend: Backend,
    dataset: Dataset,
    *,
    limit: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> TaskOutcome:
    started = time.perf_counter()
    samples = dataset.samples[:limit] if limit else dataset.samples
    if task.output_type == "perplexity":
        metrics, details = _run_perplexity(task, backend, samples, progress)
    elif task.output_type == "multiple_choice":
        metrics, details = _run_multiple_choice(task, backend, dataset, samples, progress)
    else:
        metrics, details = _run_generation(task, backend, dataset, samples, progress)
    return TaskOutcome(task, metrics, len(samples), details, time.perf_counter() - started)


def _run_perplexity(
    task: TaskConfig, backend: Backend, samples: list[Sample], progress: Callable[[int, int], None] | None
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    texts = [task.prompt_template.format(**s) for s in samples]
    scores = backend.loglikelihood_rolling(texts, progress)
    total_lp = sum(r.logprob for r in scores)
    total_tokens = sum(r.num_tokens for r in scores)
    total_bytes = sum(len(t.encode("utf-8")) for t in texts)
    details = [
        {
            "id": s["id"],
            "prompt": t,
            "logprob": r.logprob,
            "num_tokens": r.num_tokens,
            "perplexity": math.exp(-r.logprob / r.num_tokens) if r.num_tokens else None,
        }
        for s, t, r in zip(samples, texts, scores, strict=True)
    ]
    return perplexity_metrics(total_lp, total_tokens, total_bytes), details


def _run_multiple_choice(
    task: TaskConfig,
    backend: Backend,
    dataset: Dataset,
    samples: list[Sample],
    progress: Callable[[int, int], None] | None,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    prompts = [build_prompt(task, dataset, s) for s in samples]
    requests = [(p, c) for p in prompts for c in task.choices]
    scores = backend.loglikelihood(requests, progress)
    k = len(task.choices)
    details, correct = [], []
    for n, (sample, prompt) in enumerate(zip(samples, prompts, strict=True)):
        lps = [r.logprob for r in scores[n * k : (n + 1) * k]]
        pred = max(range(k), key=lambda i: lps[i])
        ok = pred == sample["gold"]
        correct.append(float(ok))
        details.append(
            {
                "id": sample["id"],
                "prompt": prompt,
                "prediction": task.choices[pred],
                "extracted": task.choices[pred],
                "target": task.choices[sample["gold"]],
                "logprobs": lps,
                "correct": ok,
            }
        )
    return {task.primary_metric: mean(correct)}, details


def _run_generation(
    task: TaskConfig,
    backend: Backend,
    dataset: Dataset,
    samples: list[Sample],
    progress: Callable[[int, int], None] | None,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    prompts = [build_prompt(task, dataset, s) for s in samples]
    outputs = backend.generate(prompts, task.generation, progress)
    extract = EXTRACTORS[task.extractor] if task.extractor else (lambda s: s.strip())
    details, correct = [], []
    for sample, prompt, output in zip(samples, prompts, outputs, strict=True):
        extracted = extract(output)
        target = str(sample[task.target_field])
        if task.extractor == "gsm8k_strict":
            target = normalize_number(target)
        ok = extracted is not None and extracted == target
        correct.append(float(ok))
        details.append(
            {
                "id": sample["id"],
                "prompt": prompt,
                "prediction": output,
                "extracted": extracted,
                "target": target,
                "correct": ok,
            }
        )
    return {task.primary_metric: mean(correct)}, details


def evaluate(
    tasks: list[TaskConfig],
    backend: Backend,
    *,
    data_root: Path | None = None,
    limit: int | None = None,
    progress: RunProgress | None = None,
) -> EvalReport:
    """Run every task; a task whose data is absent is skipped with the reason (never a failure)."""
    report = EvalReport()
    for n, task in enumerate(tasks):
        try:
            dataset = load(task.loader, data_root)
        except DataUnavailable as exc:
            log.warning("skipping task %s: %s", task.name, exc)
            report.skipped[task.name] = str(exc)
            continue

        def on_batch(done: int, total: int, n: int = n, name: str = task.name) -> None:
            if progress:
                progress(name, (n + done / max(total, 1)) / len(tasks), f"{name}: {done}/{total}")

        outcome = run_task(task, backend, dataset, limit=limit, progress=on_batch)
        log.info(
            "task %s: %s (%d samples, %.1fs)",
            task.name,
            outcome.metrics,
            outcome.num_samples,
            outcome.seconds,
        )
        report.outcomes.append(outcome)
    return report


def write_report(report: EvalReport, out_dir: Path, *, extra: dict[str, Any] | None = None) -> None:
    """``summary.json`` ({task: {metric: value}}), ``results.json`` (with hashes, skipped tasks) and
    ``details/<task>.jsonl``. Existing results of other tasks in the folder are kept (merged)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    details_dir = out_dir / "details"
    details_dir.mkdir(exist_ok=True)
    for outcome in report.outcomes:
        tmp = details_dir / f"{outcome.task.name}.jsonl.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            for row in outcome.details:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        tmp.replace(details_dir / f"{outcome.task.name}.jsonl")
    summary = _read_json(out_dir / "summary.json") | report.summary()
    results = _read_json(out_dir / "results.json")
    tasks = results.get("tasks", {}) | {o.task.name: o.summary_row() for o in report.outcomes}
    skipped = {k: v for k, v in (results.get("skipped", {}) | report.skipped).items() if k not in tasks}
    _write_json(out_dir / "summary.json", summary)
    _write_json(out_dir / "results.json", {"tasks": tasks, "skipped": skipped, **(extra or {})})


def _read_json(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    return data if isinstance(data, dict) else {}


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=True))
    tmp.replace(path)
