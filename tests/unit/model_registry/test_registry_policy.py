from pathlib import Path

from services.model_registry.core.policy import Gate, PromotionPolicy, Result, decide


def ppl(v: float, h: str = "h1") -> Result:
    return Result("perplexity", {"perplexity": v}, "perplexity", False, h)


def acc(v: float, h: str = "h1") -> Result:
    return Result("demo_facts", {"accuracy": v}, "accuracy", True, h)


POLICY = PromotionPolicy(
    gates={
        "perplexity": Gate(tolerance=0.02, max_value=100.0),
        "demo_facts": Gate(tolerance=0.05, tolerance_kind="absolute", min_value=0.1),
    }
)


def test_first_version_promoted_when_floors_pass() -> None:
    d = decide(POLICY, {"perplexity": ppl(50), "demo_facts": acc(0.3)}, None)
    assert d.promote, d.reason
    assert "first version" in d.reason and "floor 0.1" in d.reason


def test_first_version_rejected_below_floor() -> None:
    d = decide(POLICY, {"perplexity": ppl(50), "demo_facts": acc(0.05)}, None)
    assert not d.promote
    assert "demo_facts.accuracy 0.05 < floor 0.1" in d.reason


def test_ceiling_on_lower_is_better() -> None:
    d = decide(POLICY, {"perplexity": ppl(150)}, None)
    assert not d.promote and "ceiling 100" in d.reason


def test_better_than_champion_promoted() -> None:
    champ = {"perplexity": ppl(40), "demo_facts": acc(0.5)}
    d = decide(POLICY, {"perplexity": ppl(35), "demo_facts": acc(0.48)}, champ, "champion m:1")
    assert d.promote, d.reason


def test_perplexity_beyond_relative_tolerance_rejected() -> None:
    champ = {"perplexity": ppl(40), "demo_facts": acc(0.5)}
    d = decide(POLICY, {"perplexity": ppl(41), "demo_facts": acc(0.6)}, champ)
    assert not d.promote
    assert "limit 40.8" in d.reason  # 40 × 1.02


def test_accuracy_drop_beyond_absolute_tolerance_rejected() -> None:
    champ = {"perplexity": ppl(40), "demo_facts": acc(0.5)}
    d = decide(POLICY, {"perplexity": ppl(30), "demo_facts": acc(0.44)}, champ)
    assert not d.promote and "demo_facts" in d.reason


def test_no_improvement_rejected_when_required() -> None:
    champ = {"perplexity": ppl(40)}
    assert not decide(POLICY, {"perplexity": ppl(40)}, champ).promote
    lenient = POLICY.model_copy(update={"require_improvement": False})
    assert decide(lenient, {"perplexity": ppl(40)}, champ).promote


def test_different_task_version_skips_relative_gate() -> None:
    d = decide(POLICY, {"perplexity": ppl(90, "h2")}, {"perplexity": ppl(40, "h1")})
    assert d.promote and "relative gate skipped" in d.reason


def test_required_gate_missing_and_nothing_gated() -> None:
    strict = PromotionPolicy(gates={"demo_facts": Gate(required=True)})
    assert "required but not evaluated" in decide(strict, {"perplexity": ppl(5)}, None).reason
    assert not decide(POLICY, {"other": Result("other", {"x": 1}, "x", True, "h")}, None).promote


def test_policy_from_yaml(tmp_path: Path) -> None:
    f = tmp_path / "policy.yaml"
    f.write_text("mode: manual\ngates:\n  perplexity: {tolerance: 0.1, max_value: 20}\n")
    p = PromotionPolicy.from_file(f)
    assert p.mode == "manual" and p.gates["perplexity"].max_value == 20


def test_first_version_without_bounds_still_reports_what_it_saw() -> None:
    d = decide(PromotionPolicy(gates={"perplexity": Gate()}), {"perplexity": ppl(42)}, None)
    assert d.promote and "perplexity.perplexity 42 (no champion, no bound set)" in d.reason


# ------------------------------------------------------------------------------ head-to-head gates
def _pairwise(win: float, lower: float, opponent: int | None = 1) -> Result:
    metrics = {"win_rate": win, "win_rate_lower": lower, "win_rate_upper": min(1.0, win + 0.2)}
    return Result("pairwise_facts", metrics, "win_rate", True, "h", opponent)


def test_head_to_head_gate_on_win_rate_and_its_lower_bound() -> None:
    policy = PromotionPolicy(
        gates={"pairwise_facts": Gate(min_win_rate=0.5, min_win_rate_lower_bound=0.45, required=True)}
    )
    champ = {"pairwise_facts": _pairwise(0.5, 0.3)}  # the champion's own head-to-head is not the bar
    assert decide(policy, {"pairwise_facts": _pairwise(0.8, 0.6)}, champ, champion_version=1).promote
    low = decide(policy, {"pairwise_facts": _pairwise(0.6, 0.40)}, champ, champion_version=1)
    assert not low.promote and "win_rate_lower 0.4 < 0.45" in low.reason
    lost = decide(policy, {"pairwise_facts": _pairwise(0.3, 0.1)}, champ)
    assert not lost.promote and "win_rate 0.3 < 0.5" in lost.reason
    stale = decide(policy, {"pairwise_facts": _pairwise(0.9, 0.7, opponent=2)}, champ, champion_version=3)
    assert not stale.promote and "judged against version 2, the champion is version 3" in stale.reason
    assert not decide(policy, {}, champ).promote  # required but not evaluated
    # no champion: the first version is not held to a head-to-head it could not play
    first = decide(policy, {}, None)
    assert first.promote and "not applicable" in first.reason
