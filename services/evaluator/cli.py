"""``puyu eval``: the same core the service runs, on a local model folder or an OpenAI-compatible
endpoint, with an OpenCompass-like summary table (dataset, version hash, metric, mode, value)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from services.evaluator.config import EvaluatorSettings, ModelDType
from services.evaluator.core import EvalReport, Evaluator, ModelSpec, write_report
from services.evaluator.core.compare import Row, Run, compare, load_run

_MODES = {
    "perplexity": "ppl",
    "multiple_choice": "ppl",
    "generation": "gen",
    "code_execution": "gen",
    "judged": "judge",
    "pairwise": "pairwise",
}


def eval_cmd(
    tasks: list[str],
    model_path: Path | None,
    out_dir: Path,
    limit: int | None = None,
    *,
    endpoint: str | None = None,
    model_name: str | None = None,
    api_key: str | None = None,
    generation_api: Literal["chat", "completions"] = "chat",
    dtype: ModelDType | None = None,
    settings: EvaluatorSettings | None = None,
    console: Console | None = None,
) -> EvalReport:
    """Evaluate ``model_path`` (a Hugging Face folder) or ``endpoint`` + ``model_name`` on ``tasks``;
    write ``out_dir/summary.json``, ``results.json`` and ``details/<task>.jsonl``; print a table.
    ``dtype``: the folder's precision (None: the settings', ``PUYU_EVALUATOR_DTYPE``, default auto)."""
    s = settings or EvaluatorSettings()
    if dtype is not None:
        s = s.model_copy(update={"evaluator_dtype": dtype})
    console = console or Console()
    spec = ModelSpec(
        path=Path(model_path) if model_path else None,
        endpoint=endpoint,
        model_name=model_name,
        api_key=api_key,
        generation_api=generation_api,
    )
    with Progress(console=console, transient=True) as bar:
        tid = bar.add_task("evaluating", total=1.0)

        def progress(stage: str, fraction: float, message: str) -> None:
            bar.update(tid, completed=fraction, description=message or stage)

        report = Evaluator(s).evaluate(spec, tasks, limit=limit, progress=progress)
    model = (
        {"model_path": str(model_path)} if model_path else {"endpoint": endpoint, "model_name": model_name}
    )
    write_report(report, Path(out_dir), extra=model)
    console.print(summary_table(report))
    console.print(f"results in {out_dir}")
    return report


def summary_table(report: EvalReport) -> Table:
    """One row per (task, metric), as OpenCompass prints it: dataset, version, metric, mode, value."""
    table = Table(title="evaluation")
    for col in ("dataset", "version", "metric", "mode", "value", "samples", "cached"):
        table.add_column(col)
    for o in report.outcomes:
        for metric, value in o.metrics.items():
            mark = ("↑" if o.task.higher_is_better else "↓") if metric == o.task.primary_metric else ""
            shown = f"{value:.4f}" if math.isfinite(value) else "n/a"
            se = o.stderr.get(metric)
            if se is not None and math.isfinite(se) and math.isfinite(value):
                shown += f" ± {se:.4f}"
            table.add_row(
                o.task.name,
                o.version_hash[:6],
                f"{metric} {mark}".strip(),
                _MODES[o.task.output_type],
                shown,
                str(o.num_samples),
                str(o.cached),
            )
    for name, reason in report.skipped.items():
        table.add_row(name, "-", "skipped", "-", reason, "0", "0")
    for name, reason in report.failed.items():
        table.add_row(name, "-", "failed", "-", reason, "0", "0")
    return table


def compare_cmd(
    refs: list[str], *, settings: EvaluatorSettings | None = None, console: Console | None = None
) -> list[Row]:
    """``puyu eval compare RUN_OR_VERSION...``: the runs side by side, marks against the first."""
    s = settings or EvaluatorSettings()
    console = console or Console()
    store = Evaluator(s).store if any(not Path(r).exists() for r in refs) else None
    runs = [load_run(r, store) for r in refs]
    rows = compare(runs)
    console.print(comparison_table(runs, rows))
    console.print(
        f"value ± standard error; ▲/▼ better/worse than {runs[0].label} beyond 1.96 combined standard "
        "errors; ≠ another task version (not comparable)"
    )
    return rows


def comparison_table(runs: list[Run], rows: list[Row]) -> Table:
    table = Table(title="comparison")
    for col in ("dataset", "metric", *(r.label for r in runs)):
        table.add_column(col)
    for row in rows:
        cells = []
        for c in row.cells:
            if c.value is None:
                cells.append("-")
                continue
            text = f"{c.value:.4f}" + (f" ± {c.stderr:.4f}" if c.stderr is not None else "")
            cells.append(f"{text} {c.mark}".rstrip())
        arrow = "↑" if row.higher_is_better else "↓"
        table.add_row(row.task, f"{row.metric} {arrow}", *cells)
    return table
