"""Promotion policy: per-task gates relative to the champion plus absolute floors, as configuration.

A gate compares the candidate's metric (the task's primary metric unless named) with the champion's:
- ``tolerance_kind="relative"``: lower-is-better may not exceed champion × (1 + tolerance);
  higher-is-better may not fall below champion × (1 − tolerance);
- ``tolerance_kind="absolute"``: may not be worse than the champion by more than ``tolerance``.
``min_value`` / ``max_value`` are absolute bounds checked whether or not there is a champion.
A head-to-head gate (``min_win_rate`` / ``min_win_rate_lower_bound``) reads a pairwise task's
``win_rate`` and the lower end of its 95% interval, ``win_rate_lower``: the candidate was judged
against the champion directly, so there is no champion number to compare; a win rate above 1/2
counts as an improvement. Without a champion it does not apply.
Every check is recorded with its numbers, so the decision explains itself.

A quantised version (its registration names the parent and the method) is gated against its parent
instead (``QuantizedGates``, ``parent_gate.decide_against_parent``): it may lose at most the stated
amount, and need not improve on anything.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field


class Gate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    metric: str | None = Field(
        default=None, description="Metric to gate on; default: the task's primary metric."
    )
    tolerance: float = Field(default=0.0, ge=0)
    tolerance_kind: Literal["relative", "absolute"] = "relative"
    min_value: float | None = None
    max_value: float | None = None
    required: bool = Field(default=False, description="Reject when the task was not evaluated.")
    min_win_rate: float | None = Field(
        default=None, ge=0, le=1, description="Pairwise task: the candidate's win rate against the champion."
    )
    min_win_rate_lower_bound: float | None = Field(
        default=None, ge=0, le=1, description="Pairwise task: the lower end of the win rate's 95% interval."
    )

    @property
    def head_to_head(self) -> bool:
        return self.min_win_rate is not None or self.min_win_rate_lower_bound is not None


def _perplexity_within_3_percent() -> dict[str, Gate]:
    return {"perplexity": Gate(tolerance=0.03, tolerance_kind="relative", required=True)}


class QuantizedGates(BaseModel):
    """How close a quantised version must stay to its parent (the version it was quantised from)
    before it may replace it: each gate compares the version's metric with the parent's, as a
    ``Gate`` compares with the champion's (``tolerance``, ``tolerance_kind``, bounds, ``required``).
    ``gates`` names tasks; ``other_tasks`` applies to every other task the policy gates (its
    ``gates``, head-to-head ones aside). Default: perplexity within 3%, each other gated task within
    1 point (0.01 on a 0-1 metric). Without an improvement asked for: the gain is the cost.
    """

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(
        default=True, description="Gate versions with quantisation lineage against their parent."
    )
    gates: dict[str, Gate] = Field(default_factory=_perplexity_within_3_percent)
    other_tasks: Gate | None = Field(
        default_factory=lambda: Gate(tolerance=0.01, tolerance_kind="absolute"),
        description="The gate of every other task the policy gates; None: only the tasks in ``gates``.",
    )


class PromotionPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Literal["auto", "manual"] = "auto"
    gates: dict[str, Gate] = Field(
        default_factory=lambda: {
            "perplexity": Gate(tolerance=0.02, tolerance_kind="relative"),
            "demo_facts": Gate(tolerance=0.05, tolerance_kind="absolute"),
        }
    )
    require_improvement: bool = Field(
        default=True, description="With a champion: at least one gated metric must be strictly better."
    )
    quantized: QuantizedGates = Field(
        default_factory=QuantizedGates,
        description="A quantised version is gated against its parent (and against the champion too "
        "when the champion is another version).",
    )

    @classmethod
    def from_file(cls, path: str | Path) -> PromotionPolicy:
        text = Path(path).read_text()
        data = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
        return cls.model_validate(data or {})


@dataclass(frozen=True)
class Result:
    """The slice of an evaluation result the policy needs (built from events or database rows)."""

    task: str
    metrics: dict[str, float]
    primary_metric: str
    higher_is_better: bool
    version_hash: str
    opponent: int | None = None  # pairwise: the champion version it was judged against, when known


@dataclass(frozen=True)
class Check:
    task: str
    metric: str
    passed: bool
    detail: str


@dataclass
class Decision:
    promote: bool
    checks: list[Check] = field(default_factory=list)
    summary: str = ""

    @property
    def reason(self) -> str:
        parts = [c.detail for c in self.checks]
        return f"{self.summary}: " + "; ".join(parts) if parts else self.summary

    def as_dict(self) -> dict[str, object]:
        return {
            "promote": self.promote,
            "summary": self.summary,
            "checks": [c.__dict__ for c in self.checks],
        }


def _fmt(x: float) -> str:
    return f"{x:.4g}"


@dataclass
class _Tally:
    """What the gates found so far, task by task."""

    checks: list[Check] = field(default_factory=list)
    gated_seen: bool = False  # some gated task was evaluated with its metric
    compared: bool = False  # some gate compared against the champion's numbers
    improved: bool = False  # some compared metric is strictly better than the champion's


def decide(
    policy: PromotionPolicy,
    candidate: dict[str, Result],
    champion: dict[str, Result] | None,
    champion_label: str | None = None,
    champion_version: int | None = None,
) -> Decision:
    """Apply ``policy`` to the candidate's results (by task) against the champion's (None: no champion).
    ``champion_version``: when given, a head-to-head result against another version fails its gate."""
    tally = _Tally()
    for task, gate in sorted(policy.gates.items()):
        if gate.head_to_head:
            _apply_head_to_head(tally, task, gate, candidate.get(task), champion, champion_version)
            continue
        _apply_gate(tally, task, gate, candidate.get(task), champion, champion_label)
    checks = tally.checks
    failed = [c for c in checks if not c.passed]
    who = champion_label or "champion"
    if failed:
        summary = f"rejected ({len(failed)} gate(s) failed)"
        return Decision(False, checks, summary)
    if not tally.gated_seen:
        return Decision(
            False,
            checks,
            f"rejected: no gated task was evaluated (gates: {', '.join(sorted(policy.gates)) or 'none'})",
        )
    if champion is None:
        return Decision(True, checks, "promoted: first version, passes the floors")
    if policy.require_improvement and tally.compared and not tally.improved:
        checks.append(Check("*", "*", False, f"no gated metric strictly better than {who}"))
        return Decision(False, checks, "rejected (no improvement)")
    return Decision(True, checks, f"promoted: passes every gate against {who}")


def _apply_gate(
    tally: _Tally,
    task: str,
    gate: Gate,
    res: Result | None,
    champion: dict[str, Result] | None,
    champion_label: str | None,
) -> None:
    """Check one task's result against its gate: bounds first, then the champion's number."""
    checks = tally.checks
    if res is None:
        if gate.required:
            checks.append(Check(task, gate.metric or "?", False, f"{task}: required but not evaluated"))
        return
    metric = gate.metric or res.primary_metric
    if metric not in res.metrics:
        checks.append(Check(task, metric, False, f"{task}: metric {metric!r} missing from results"))
        return
    tally.gated_seen = True
    value = res.metrics[metric]
    checks += _bound_checks(task, metric, value, gate)
    champ = champion.get(task) if champion else None
    if champ is None or metric not in champ.metrics:
        if gate.min_value is None and gate.max_value is None:  # still say what was seen
            against = "no champion" if champion is None else f"{champion_label or 'champion'} lacks it"
            checks.append(
                Check(task, metric, True, f"{task}.{metric} {_fmt(value)} ({against}, no bound set)")
            )
        return
    if champ.version_hash != res.version_hash:
        # Different prompts/config: numbers are not comparable, only the absolute bounds apply.
        checks.append(
            Check(
                task,
                metric,
                True,
                f"{task}: champion evaluated with task version "
                f"{champ.version_hash[:12]}, candidate with "
                f"{res.version_hash[:12]}; relative gate skipped",
            )
        )
        return
    tally.compared = True
    ref, hib = champ.metrics[metric], res.higher_is_better
    if (value > ref) if hib else (value < ref):
        tally.improved = True
    checks.append(_relative_check(task, metric, value, ref, gate, hib))


def _apply_head_to_head(
    tally: _Tally,
    task: str,
    gate: Gate,
    res: Result | None,
    champion: dict[str, Result] | None,
    champion_version: int | None,
) -> None:
    """A pairwise task's win rate (and its interval's lower end) against the champion."""
    checks = tally.checks
    if champion is None:
        tally.gated_seen = True  # nothing to play against: the first version passes on its floors
        checks.append(Check(task, "win_rate", True, f"{task}: no champion, head-to-head gate not applicable"))
        return
    if res is None:
        if gate.required:
            checks.append(Check(task, "win_rate", False, f"{task}: required but not evaluated"))
        return
    missing = [m for m in ("win_rate", "win_rate_lower") if m not in res.metrics]
    if missing:
        checks.append(
            Check(task, "win_rate", False, f"{task}: {', '.join(missing)} missing (not a pairwise task?)")
        )
        return
    tally.gated_seen = True
    if champion_version is not None and res.opponent is not None and res.opponent != champion_version:
        detail = f"{task}: judged against version {res.opponent}, the champion is version {champion_version}"
        checks.append(Check(task, "win_rate", False, detail))
        return
    win, lower = res.metrics["win_rate"], res.metrics["win_rate_lower"]
    upper = res.metrics.get("win_rate_upper", float("nan"))
    interval = f"95% interval [{_fmt(lower)}, {_fmt(upper)}]"
    if gate.min_win_rate is not None:
        ok = win >= gate.min_win_rate
        detail = f"{task}.win_rate {_fmt(win)} {'>=' if ok else '<'} {_fmt(gate.min_win_rate)} ({interval})"
        checks.append(Check(task, "win_rate", ok, detail))
    if gate.min_win_rate_lower_bound is not None:
        ok = lower >= gate.min_win_rate_lower_bound
        detail = (
            f"{task}.win_rate_lower {_fmt(lower)} {'>=' if ok else '<'} {_fmt(gate.min_win_rate_lower_bound)}"
        )
        checks.append(Check(task, "win_rate_lower", ok, detail))
    tally.compared = True
    if win > 0.5:
        tally.improved = True


def _bound_checks(task: str, metric: str, value: float, gate: Gate) -> list[Check]:
    """The absolute floor and ceiling, checked whether or not there is a champion."""
    out = []
    if gate.min_value is not None:
        ok = value >= gate.min_value
        detail = f"{task}.{metric} {_fmt(value)} {'>=' if ok else '<'} floor {_fmt(gate.min_value)}"
        out.append(Check(task, metric, ok, detail))
    if gate.max_value is not None:
        ok = value <= gate.max_value
        detail = f"{task}.{metric} {_fmt(value)} {'<=' if ok else '>'} ceiling {_fmt(gate.max_value)}"
        out.append(Check(task, metric, ok, detail))
    return out


def _relative_check(
    task: str, metric: str, value: float, ref: float, gate: Gate, hib: bool, who: str = "champion"
) -> Check:
    """The candidate may be worse than ``who``'s ``ref`` (the champion's, or a parent's) by at most the
    gate's tolerance."""
    if gate.tolerance_kind == "relative":
        limit = ref * (1 - gate.tolerance) if hib else ref * (1 + gate.tolerance)
        how = f"{who} {_fmt(ref)} × (1 {'−' if hib else '+'} {gate.tolerance:g})"
    else:
        limit = ref - gate.tolerance if hib else ref + gate.tolerance
        how = f"{who} {_fmt(ref)} {'−' if hib else '+'} {gate.tolerance:g}"
    ok = value >= limit if hib else value <= limit
    detail = f"{task}.{metric} {_fmt(value)} {'ok' if ok else 'worse than'} limit {_fmt(limit)} = {how}"
    return Check(task, metric, ok, detail)
