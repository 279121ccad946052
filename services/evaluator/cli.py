"""``puyu eval``: the same core the service runs, on a local model folder, with a rich summary table."""

from __future__ import annotations

import math
from pathlib import Path

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from services.evaluator.config import EvaluatorSettings
from services.evaluator.core import evaluate_model
from services.evaluator.runner import EvalReport, write_report


def eval_cmd(
    tasks: list[str],
    model_path: Path,
    out_dir: Path,
    limit: int | None = None,
    *,
    settings: EvaluatorSettings | None = None,
    console: Console | None = None,
) -> EvalReport:
    """Evaluate ``model_path`` (a Hugging Face folder) on ``tasks``; write ``out_dir/summary.json``,
    ``results.json`` and ``details/<task>.jsonl``; print a table. Returns the report."""
    s = settings or EvaluatorSettings()
    console = console or Console()
    with Progress(console=console, transient=True) as bar:
        tid = bar.add_task("evaluating", total=1.0)

        def progress(stage: str, fraction: float, message: str) -> None:
            bar.update(tid, completed=fraction, description=message or stage)

        report = evaluate_model(
            Path(model_path),
            tasks,
            data_root=s.evaluator_data_dir,
            perplexity_path=s.evaluator_perplexity_path,
            limit=limit or s.evaluator_limit,
            batch_size=s.evaluator_batch_size,
            num_threads=s.evaluator_num_threads,
            device=s.evaluator_device,
            progress=progress,
        )
    write_report(report, Path(out_dir), extra={"model_path": str(model_path)})
    console.print(summary_table(report))
    console.print(f"results in {out_dir}")
    return report


def summary_table(report: EvalReport) -> Table:
    table = Table(title="evaluation")
    for col in ("task", "metric", "value", "samples", "version"):
        table.add_column(col)
    for o in report.outcomes:
        for metric, value in o.metrics.items():
            mark = ("↑" if o.task.higher_is_better else "↓") if metric == o.task.primary_metric else ""
            shown = f"{value:.4f}" if math.isfinite(value) else "n/a"
            table.add_row(
                o.task.name, f"{metric} {mark}".strip(), shown, str(o.num_samples), o.task.version_hash[:12]
            )
    for name, reason in report.skipped.items():
        table.add_row(name, "skipped", reason, "0", "")
    return table
