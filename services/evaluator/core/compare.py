"""Runs side by side: per task and metric, each run's value and standard error, and whether it differs
from the first run beyond noise (OpenCompass's summariser, plus the uncertainty).

A run is a results folder (``puyu eval --out``) or a registered version (``NAME:VERSION``, read
from the artifact store where the service wrote its report). Numbers are compared only between
equal task versions (same prompts, config, chat template, judge); a difference is marked when it
exceeds 1.96 combined standard errors, sqrt(se_a^2 + se_b^2).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.evaluator.core.errors import EvaluatorRefusal
from services.evaluator.core.stats import beyond_noise
from shared.artifacts import ArtifactStore

_VERSION = re.compile(r"^(?P<name>[^:/\\]+):v?(?P<version>\d+)$")


class UnknownRun(EvaluatorRefusal):
    """A run that is neither a results folder nor a version with stored results."""


@dataclass(frozen=True)
class Run:
    label: str
    tasks: dict[str, dict[str, Any]]  # results.json's rows: metrics, stderr, version_hash ...


@dataclass(frozen=True)
class Cell:
    value: float | None
    stderr: float | None
    mark: str = ""  # "▲" better / "▼" worse than the first run beyond noise; "≠" other task version


@dataclass(frozen=True)
class Row:
    task: str
    metric: str
    higher_is_better: bool
    cells: list[Cell]


def load_run(ref: str, store: ArtifactStore | None = None) -> Run:
    path = Path(ref)
    if path.is_dir() or path.name == "results.json":
        file = path / "results.json" if path.is_dir() else path
        if not file.is_file():
            raise UnknownRun(f"{ref}: no results.json")
        return Run(ref, _tasks(json.loads(file.read_text())))
    match = _VERSION.match(ref)
    if match and store is not None:
        from services.evaluator.core.evaluator import results_key

        uri = store.uri(f"{results_key(match['name'], int(match['version']))}/results.json")
        if store.exists(uri):
            return Run(ref, _tasks(store.read_json(uri)))
        raise UnknownRun(f"{ref}: no stored evaluation at {uri}")
    raise UnknownRun(f"{ref}: not a results folder nor NAME:VERSION")


def _tasks(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    tasks = results.get("tasks", {})
    return tasks if isinstance(tasks, dict) else {}


def compare(runs: list[Run]) -> list[Row]:
    """One row per (task, metric) any run has, in task order; cells in run order."""
    rows: list[Row] = []
    tasks = list(dict.fromkeys(t for r in runs for t in r.tasks))
    for task in tasks:
        present = [r.tasks.get(task) for r in runs]
        metrics = list(dict.fromkeys(m for p in present if p for m in p.get("metrics", {})))
        hib = next((bool(p.get("higher_is_better", True)) for p in present if p), True)
        for metric in metrics:
            cells = []
            base = present[0]
            for n, p in enumerate(present):
                if p is None or metric not in p.get("metrics", {}):
                    cells.append(Cell(None, None))
                    continue
                value, se = _number(p["metrics"][metric]), _number(p.get("stderr", {}).get(metric))
                cells.append(Cell(value, se, _mark(base, p, metric, hib) if n else ""))
            rows.append(Row(task, metric, hib, cells))
    return rows


def _number(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else None


def _mark(base: dict[str, Any] | None, other: dict[str, Any], metric: str, hib: bool) -> str:
    if base is None or metric not in base.get("metrics", {}):
        return ""
    if base.get("version_hash") != other.get("version_hash"):
        return "≠"
    a, b = _number(base["metrics"][metric]), _number(other["metrics"][metric])
    if a is None or b is None:
        return ""
    if not beyond_noise(
        b, _number(other.get("stderr", {}).get(metric)), a, _number(base.get("stderr", {}).get(metric))
    ):
        return ""
    return "▲" if (b > a) == hib else "▼"
