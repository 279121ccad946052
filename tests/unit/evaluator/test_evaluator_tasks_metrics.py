"""Task definitions, answer extraction and metric arithmetic (no model)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from services.evaluator.core.metrics import (
    extract_first_word,
    extract_gsm8k_strict,
    perplexity_metrics,
    truncate_at_stop,
)
from services.evaluator.core.tasks import BUILTIN_TASK_NAMES, UnknownTask, get_task, resolve_tasks

GSM8K_TEST = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "gsm8k" / "test.jsonl"


def test_version_hash_is_stable_and_sensitive() -> None:
    a, b = get_task("demo_facts"), get_task("demo_facts")
    assert a.version_hash == b.version_hash and len(a.version_hash) == 64
    changed = a.model_copy(update={"prompt_template": "Q: {prompt}"})
    assert changed.version_hash != a.version_hash
    # every built-in task has its own fingerprint
    assert len({get_task(n).version_hash for n in BUILTIN_TASK_NAMES}) == len(BUILTIN_TASK_NAMES)
    # pointing perplexity at a file is a different task
    assert (
        get_task("perplexity", perplexity_path="x.jsonl").version_hash != get_task("perplexity").version_hash
    )


def test_unknown_tasks_are_named() -> None:
    with pytest.raises(UnknownTask, match="'mmlu_pro'"):
        resolve_tasks(["perplexity", "mmlu_pro"])
    with pytest.raises(UnknownTask):
        resolve_tasks([])
    assert [t.name for t in resolve_tasks(["gsm8k", "gsm8k", "cmmlu"])] == ["gsm8k", "cmmlu"]


def test_primary_metrics_and_direction() -> None:
    ppl = get_task("perplexity")
    assert (ppl.primary_metric, ppl.higher_is_better) == ("perplexity", False)
    assert "bits_per_byte" in ppl.metrics
    for name in ("demo_facts", "cmmlu", "gsm8k"):
        assert get_task(name).higher_is_better


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("She pays 5 + 3 = 8.\n#### 8", "8"),
        ("#### 1,450,000", "1450000"),
        ("#### -3", "-3"),
        ("#### $18.", "18"),
        ("#### 2.50", "2.5"),
        ("so the answer is 42", None),  # strict: no '####', no answer
        ("#### ", None),
        ("#### 7\n\nQuestion: next #### 9", "7"),
    ],
)
def test_gsm8k_strict_cases(text: str, expected: str | None) -> None:
    assert extract_gsm8k_strict(text) == expected


@pytest.mark.skipif(not GSM8K_TEST.exists(), reason=f"GSM8K test split not present at {GSM8K_TEST}")
def test_gsm8k_strict_recovers_every_official_answer() -> None:
    lines = GSM8K_TEST.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1319
    for line in lines:
        answer = json.loads(line)["answer"]
        official = answer.split("####")[-1].strip()
        extracted = extract_gsm8k_strict(answer)
        assert extracted is not None, answer
        assert extracted == official.replace(",", ""), (official, extracted)
        assert int(extracted) == int(official.replace(",", ""))


def test_first_word_and_stop() -> None:
    assert extract_first_word(" Velm. It is old.") == "Velm"
    assert extract_first_word("\n  , Velm") == "Velm"
    assert extract_first_word("  ") is None
    assert truncate_at_stop(" Velm\nThe", ["\n"]) == " Velm"
    assert truncate_at_stop("a b", []) == "a b"


def test_perplexity_is_token_weighted() -> None:
    # two docs: 10 tokens at nll 1, 30 tokens at nll 2 -> mean nll 1.75 (not the mean of per-doc ppl)
    m = perplexity_metrics(-(10 * 1.0 + 30 * 2.0), 40, 100)
    assert m["perplexity"] == pytest.approx(math.exp(1.75))
    assert m["bits_per_byte"] == pytest.approx(70 / (math.log(2) * 100))
    assert math.isnan(perplexity_metrics(0.0, 0, 0)["perplexity"])
