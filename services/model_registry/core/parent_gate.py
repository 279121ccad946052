"""The promotion gate of a quantised version: within the stated loss of its parent.

A quantised version is its parent made cheaper, so the question is not whether it beats the champion
but whether it lost too much against the version it came from: each gated task is compared with the
parent's result (``PromotionPolicy.quantized``), the ordinary floors and ceilings still hold, and no
improvement is asked for. When the champion is another version than the parent, the version must
also pass the ordinary gates against that champion (``combine``), so a quantised old version cannot
replace a better champion.
"""

from __future__ import annotations

from services.model_registry.core.policy import (
    Check,
    Decision,
    Gate,
    PromotionPolicy,
    Result,
    _bound_checks,
    _relative_check,
)


def decide_against_parent(
    policy: PromotionPolicy,
    candidate: dict[str, Result],
    parent: dict[str, Result] | None,
    parent_label: str,
) -> Decision:
    """Apply ``policy.quantized`` to the candidate's results (by task) against the parent's (None:
    the parent is not registered here, so nothing can be compared and the version is rejected)."""
    rules = policy.quantized
    gated = {task: gate for task, gate in policy.gates.items() if not gate.head_to_head}
    checks: list[Check] = []
    for task, gate in sorted(gated.items()):  # the ordinary floors and ceilings hold as always
        res = candidate.get(task)
        metric = gate.metric or (res.primary_metric if res else "")
        if res is not None and metric in res.metrics:
            checks += _bound_checks(task, metric, res.metrics[metric], gate)
    limits: dict[str, Gate] = {}
    if rules.other_tasks is not None:
        limits = {task: rules.other_tasks for task in gated}
    limits |= rules.gates
    if parent is None:
        checks.append(
            Check("*", "*", False, f"{parent_label} is not registered here: nothing to compare with")
        )
        return Decision(False, checks, f"rejected against {parent_label} (parent unknown)")
    compared = 0
    for task, gate in sorted(limits.items()):
        required = gate.required or (task in gated and gated[task].required)
        found, was_compared = _against_parent(
            task, gate, required, candidate.get(task), parent.get(task), parent_label
        )
        checks += found
        compared += was_compared
    failed = [c for c in checks if not c.passed]
    if failed:
        return Decision(False, checks, f"rejected against {parent_label} ({len(failed)} gate(s) failed)")
    if not compared:
        return Decision(False, checks, f"rejected: no gated task compared with {parent_label}")
    return Decision(True, checks, f"promoted: within the stated loss of {parent_label}")


def _against_parent(
    task: str, gate: Gate, required: bool, res: Result | None, ref: Result | None, parent_label: str
) -> tuple[list[Check], bool]:
    """One task's checks against the parent, and whether its metric was compared with the parent's
    (a task not evaluated, and not required, has no checks)."""
    if res is None:
        if required:
            return [Check(task, gate.metric or "?", False, f"{task}: required but not evaluated")], False
        return [], False
    metric = gate.metric or res.primary_metric
    if metric not in res.metrics:
        return [Check(task, metric, False, f"{task}: metric {metric!r} missing from results")], False
    if ref is None or metric not in ref.metrics:
        detail = f"{task}: {parent_label} has no {metric} result to compare with"
        return [Check(task, metric, False, detail)], False
    if ref.version_hash != res.version_hash:
        detail = (
            f"{task}: {parent_label} was evaluated with task version {ref.version_hash[:12]}, this "
            f"version with {res.version_hash[:12]}: the loss against the parent cannot be measured"
        )
        return [Check(task, metric, False, detail)], False
    value, hib = res.metrics[metric], res.higher_is_better
    checks = [_relative_check(task, metric, value, ref.metrics[metric], gate, hib, parent_label)]
    return checks + _bound_checks(task, metric, value, gate), True


def combine(against_parent: Decision, against_champion: Decision, champion_label: str) -> Decision:
    """Both must pass: within the loss of the parent, and the ordinary gates against another champion."""
    checks = against_parent.checks + against_champion.checks
    if against_parent.promote and against_champion.promote:
        return Decision(True, checks, f"{against_parent.summary}; passes every gate against {champion_label}")
    failed = against_parent.summary if not against_parent.promote else against_champion.summary
    return Decision(False, checks, failed)
