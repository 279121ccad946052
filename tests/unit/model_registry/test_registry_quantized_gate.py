"""A quantised version is gated against its parent: within the stated loss it replaces it, beyond it
is rejected naming the gate; its lineage is stored, shown on the card and answered over the API."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import Engine
from test_registry_core import art, engine, reg, results  # noqa: F401 - fixtures

from contracts.events import ModelRef
from services.model_registry.core.errors import InvalidInput
from services.model_registry.core.parent_gate import decide_against_parent
from services.model_registry.core.policy import Gate, PromotionPolicy, QuantizedGates, Result
from services.model_registry.core.registry import Registry
from services.model_registry.core.views import VersionStatus
from services.model_registry.grpc_api import version_to_proto

LINEAGE = {"method": "awq", "bits": 4, "group_size": 128, "quant_method": "awq", "calibration_tokens": 4096}


def ppl(v: float, h: str = "p1") -> Result:
    return Result("perplexity", {"perplexity": v}, "perplexity", False, h)


def acc(v: float, h: str = "f1") -> Result:
    return Result("demo_facts", {"accuracy": v}, "accuracy", True, h)


PARENT = {"perplexity": ppl(40.0), "demo_facts": acc(0.50)}


def test_within_the_stated_loss_of_the_parent_passes_without_improving() -> None:
    d = decide_against_parent(
        PromotionPolicy(), {"perplexity": ppl(41.0), "demo_facts": acc(0.495)}, PARENT, "parent m:1"
    )
    assert d.promote, d.reason
    assert "within the stated loss of parent m:1" in d.reason
    assert "limit 41.2 = parent m:1 40 × (1 + 0.03)" in d.reason  # perplexity within 3%
    assert "limit 0.49 = parent m:1 0.5 − 0.01" in d.reason  # each other gated task within 1 point


@pytest.mark.parametrize(
    ("candidate", "named"),
    [
        (
            {"perplexity": ppl(41.3), "demo_facts": acc(0.5)},
            "perplexity.perplexity 41.3 worse than limit 41.2",
        ),
        (
            {"perplexity": ppl(40.0), "demo_facts": acc(0.48)},
            "demo_facts.accuracy 0.48 worse than limit 0.49",
        ),
        ({"demo_facts": acc(0.5)}, "perplexity: required but not evaluated"),
    ],
)
def test_beyond_the_stated_loss_is_rejected_naming_the_gate(candidate: dict[str, Result], named: str) -> None:
    d = decide_against_parent(PromotionPolicy(), candidate, PARENT, "parent m:1")
    assert not d.promote and named in d.reason, d.reason


def test_nothing_to_compare_with_is_a_rejection() -> None:
    candidate = {"perplexity": ppl(40.0), "demo_facts": acc(0.5)}
    unknown = decide_against_parent(PromotionPolicy(), candidate, None, "parent base:3")
    assert not unknown.promote and "parent base:3 is not registered here" in unknown.reason
    unevaluated = decide_against_parent(PromotionPolicy(), candidate, {}, "parent m:1")
    assert not unevaluated.promote and "parent m:1 has no perplexity result" in unevaluated.reason
    other_prompts = decide_against_parent(
        PromotionPolicy(), {"perplexity": ppl(40.0, h="p2")}, PARENT, "parent m:1"
    )
    assert not other_prompts.promote and "cannot be measured" in other_prompts.reason


def test_the_gates_are_configuration_and_the_floors_still_hold() -> None:
    policy = PromotionPolicy.model_validate(
        {
            "gates": {"perplexity": {"tolerance": 0.02}, "demo_facts": {"min_value": 0.6}},
            "quantized": {"gates": {"perplexity": {"tolerance": 0.10}}, "other_tasks": None},
        }
    )
    assert policy.quantized == QuantizedGates(gates={"perplexity": Gate(tolerance=0.10)}, other_tasks=None)
    loose = decide_against_parent(policy, {"perplexity": ppl(43.0)}, PARENT, "parent m:1")
    assert loose.promote, loose.reason  # 43 < 40 × 1.1; demo_facts not evaluated, not required
    floor = decide_against_parent(
        policy, {"perplexity": ppl(43.0), "demo_facts": acc(0.5)}, PARENT, "parent m:1"
    )
    assert not floor.promote and "demo_facts.accuracy 0.5 < floor 0.6" in floor.reason


def _quantised(registry: Registry, n: int, parent: int, model: str = "m") -> None:
    registry.register_version(
        model,
        art(n),
        run_id=f"qz-{n}",
        kind="quantize",
        method="awq",
        parent=ModelRef(model_name="m", version=parent),
        quantization=LINEAGE,
    )


def test_a_quantised_version_replaces_its_parent_only_within_the_loss(reg: Registry) -> None:  # noqa: F811
    reg.register_version("m", art(1), run_id="r1")
    assert reg.record_evaluation(ModelRef(model_name="m", version=1), results(40, 0.5)).outcome == "promoted"  # type: ignore[union-attr]
    _quantised(reg, 2, parent=1)
    # worse than the champion (its parent) on both tasks, but within 3% and 1 point: promoted
    close = reg.record_evaluation(ModelRef(model_name="m", version=2), results(41, 0.495))
    assert close is not None and close.outcome == "promoted", close
    assert "within the stated loss of parent m:1" in close.reason
    _quantised(reg, 3, parent=1)
    # 4-bit gone wrong: perplexity 10% up. Its parent is no longer champion (v2 is), so the ordinary
    # gates against v2 apply too; both name why
    far = reg.record_evaluation(ModelRef(model_name="m", version=3), results(44, 0.5))
    assert far is not None and far.outcome == "rejected"
    assert "perplexity.perplexity 44 worse than limit 41.2 = parent m:1" in far.reason
    assert "perplexity.perplexity 44 worse than limit 41.82 = champion 41 × (1 + 0.02)" in far.reason
    assert reg.get_version("m", 3).status is VersionStatus.REJECTED
    assert reg.get_version("m", alias="champion").version == 2


def test_lineage_is_stored_shown_on_the_card_and_answered(reg: Registry) -> None:  # noqa: F811
    reg.register_version("m", art(1), run_id="r1")
    reg.record_evaluation(ModelRef(model_name="m", version=1), results(40, 0.5))
    _quantised(reg, 2, parent=1)
    v = reg.get_version("m", 2)
    assert (v.kind, v.method, v.parent, v.quantization) == (
        "quantize",
        "awq",
        ModelRef(model_name="m", version=1),
        LINEAGE,
    )
    card = reg.model_card("m", version=2)
    assert "base_model: m:1" in card and "base_model_relation: quantized" in card
    assert (
        "quantised from the parent: AWQ 4-bit weights, group size 128, asymmetric (quant_method awq)" in card
    )
    assert json.loads(version_to_proto(v).lineage_json)["quantization"] == LINEAGE
    # a lineage without a parent says nothing of what was quantised: refused
    with pytest.raises(InvalidInput, match="needs its parent"):
        reg.register_version("m", art(3), kind="quantize", quantization=LINEAGE)


def test_ordinary_versions_keep_the_champion_gates(engine: Engine) -> None:  # noqa: F811
    from services.model_registry.core.database import migrate

    migrate(engine)
    registry = Registry(engine, PromotionPolicy(quantized=QuantizedGates(enabled=False)))
    registry.register_version("m", art(1), run_id="r1")
    registry.record_evaluation(ModelRef(model_name="m", version=1), results(40, 0.5))
    _quantised(registry, 2, parent=1)
    # parent gating off: the ordinary policy asks for an improvement over the champion
    out = registry.record_evaluation(ModelRef(model_name="m", version=2), results(40.5, 0.495))
    assert out is not None and out.outcome == "rejected" and "no improvement" in out.reason
