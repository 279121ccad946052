"""A Hugging Face-style model card (YAML metadata header + markdown) for a registered version."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import yaml

from services.model_registry.core.views import EvaluationView, VersionView

STDERR_SUFFIX = "_stderr"  # a metric's standard error, as the evaluator reports it
Z95 = 1.959963984540054


def _metadata(v: VersionView) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "library_name": "transformers",
        "pipeline_tag": "text-generation",
        "tags": ["puyu", v.kind, v.method, v.status.value] + [f"{k}:{x}" for k, x in sorted(v.tags.items())],
    }
    if v.parent:
        meta["base_model"] = f"{v.parent.model_name}:{v.parent.version}"
    if v.quantization:  # the Hub's way of saying what the version is of its base
        meta["base_model_relation"] = "quantized"
        meta["tags"] += [f"{v.quantization.get('bits')}-bit", str(v.quantization.get("quant_method"))]
    if v.datasets:  # lineage as given: DatasetRef dumps, anything else as text
        meta["datasets"] = [d.get("dataset_id", str(d)) for d in v.datasets]
    if v.evaluations:
        meta["model-index"] = [
            {
                "name": f"{v.model_name}:{v.version}",
                "results": [
                    {
                        "task": {"type": "text-generation", "name": e.task},
                        "dataset": {"type": e.task, "name": e.task, "revision": e.version_hash},
                        "metrics": [
                            {"type": k, "value": float(x), "name": k}
                            for k, x in sorted(e.metrics.items())
                            if not k.endswith(STDERR_SUFFIX)
                        ],
                    }
                    for e in v.evaluations
                ],
            }
        ]
    return meta


def _value(e: EvaluationView, metric: str) -> str:
    x = e.metrics.get(metric, math.nan)
    se = e.metrics.get(metric + STDERR_SUFFIX)
    return f"{x:.4g} ± {se:.2g}" if se is not None and math.isfinite(se) else f"{x:.4g}"


def _mark(mine: EvaluationView, other: EvaluationView, metric: str) -> str:
    """▲ / ▼ where this version is better / worse than ``other`` by more than 1.96 combined standard
    errors of the same task version; ≠ where the task versions differ (not comparable)."""
    if mine.version_hash != other.version_hash:
        return " ≠"
    a, b = mine.metrics.get(metric), other.metrics.get(metric)
    if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)):
        return ""
    se = math.hypot(
        mine.metrics.get(metric + STDERR_SUFFIX, 0.0), other.metrics.get(metric + STDERR_SUFFIX, 0.0)
    )
    if not math.isfinite(se) or abs(a - b) <= Z95 * se:
        return ""
    better = a > b if mine.higher_is_better else a < b
    return " ▲" if better else " ▼"


def comparison_table(v: VersionView, others: Sequence[VersionView]) -> list[str]:
    """This version beside ``others``, per task and metric (standard errors shown); a mark on this
    version's value says it differs from the first other version beyond the standard error."""
    if not v.evaluations or not others:
        return []
    names = [f"{v.model_name}:{v.version}"] + [f"{o.model_name}:{o.version}" for o in others]
    lines = ["| task | metric | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for e in sorted(v.evaluations, key=lambda e: e.task):
        theirs = [next((x for x in o.evaluations if x.task == e.task), None) for o in others]
        for metric in sorted(k for k in e.metrics if not k.endswith(STDERR_SUFFIX)):
            first = theirs[0]
            cells = [_value(e, metric) + (_mark(e, first, metric) if first is not None else "")]
            cells += [_value(t, metric) if t is not None else "-" for t in theirs]
            lines.append(f"| {e.task} | {metric} | " + " | ".join(cells) + " |")
    return lines


def _quantization_line(q: dict[str, Any]) -> str:
    group = "per output row" if q.get("group_size") == -1 else f"group size {q.get('group_size')}"
    grid = "symmetric" if q.get("sym") else "asymmetric"
    calibration = (
        f"calibrated on `{q['calibration_uri']}` ({q.get('calibration_tokens', 0)} tokens)"
        if q.get("calibration_uri")
        else "no calibration"
    )
    return (
        f"- quantised from the parent: {str(q.get('method', '?')).upper()} {q.get('bits')}-bit weights, "
        f"{group}, {grid} (quant_method {q.get('quant_method')}), {calibration}"
    )


def model_card(v: VersionView, compare_with: Sequence[VersionView] = ()) -> str:
    """The card; ``compare_with`` (e.g. the champion, the parent) adds a side-by-side comparison."""
    meta = _metadata(v)
    header = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)
    a = v.artifact
    lines = [
        f"---\n{header}---",
        f"# {v.model_name} version {v.version}",
        "",
        f"Status: **{v.status.value}**" + (f"; aliases: {', '.join(v.aliases)}" if v.aliases else ""),
        "",
        "## Lineage",
        "",
        f"- kind: {v.kind} ({v.method}), run `{v.run_id or '-'}`",
        f"- parent: {meta.get('base_model', 'none (trained from scratch)')}",
        f"- artifact: `{a.uri}` (sha256 `{a.sha256}`, {a.size_bytes} bytes, {v.format})",
    ]
    if v.quantization:
        lines.append(_quantization_line(v.quantization))
    lines += [
        f"- dataset: `{d.get('dataset_id')}` manifest `{d.get('manifest_uri')}` digest `{d.get('digest')}`"
        for d in v.datasets
    ]
    if v.hyperparameters:
        lines += [
            "",
            "## Hyper-parameters",
            "",
            "```yaml",
            yaml.safe_dump(v.hyperparameters, sort_keys=True).rstrip(),
            "```",
        ]
    if v.evaluations:
        lines += ["", "## Evaluation", "", "| task | metric | value | samples |", "|---|---|---|---|"]
        lines += [
            f"| {e.task} | {e.primary_metric} | {_value(e, e.primary_metric)} | {e.num_samples} |"
            for e in v.evaluations
        ]
    table = comparison_table(v, compare_with)
    if table:
        lines += [
            "",
            "## Comparison",
            "",
            "Values ± standard error; ▲ / ▼: better / worse than the next column by more than 1.96 combined "
            "standard errors; ≠: evaluated with another task version (not comparable).",
            "",
            *table,
        ]
    return "\n".join(lines) + "\n"
