"""Answer extraction on real data: every official GSM8K answer is recovered; option letters."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.evaluator.core.loaders import gsm8k_answer
from services.evaluator.core.metrics import (
    extract_choice_letter,
    extract_gsm8k_flexible,
    extract_gsm8k_strict,
    normalize_number,
    pass_at_k,
)

GSM8K_TEST = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "gsm8k" / "test.jsonl"


@pytest.mark.skipif(not GSM8K_TEST.exists(), reason=f"no gsm8k data at {GSM8K_TEST}")
def test_both_gsm8k_extractors_recover_every_official_answer() -> None:
    lines = [json.loads(line) for line in GSM8K_TEST.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert len(lines) == 1319
    for row in lines:
        official = normalize_number(row["answer"].rsplit("####", 1)[-1].strip())
        assert official == normalize_number(gsm8k_answer(row["answer"]))
        assert extract_gsm8k_strict(row["answer"]) == official, row["answer"][-80:]
        assert extract_gsm8k_flexible(row["answer"]) == official, row["answer"][-80:]


def test_strict_needs_the_marker_flexible_takes_the_last_number() -> None:
    assert extract_gsm8k_strict("so 5 + 7 = 12 apples") is None
    assert extract_gsm8k_flexible("so 5 + 7 = 12 apples") == "12"
    assert extract_gsm8k_strict("#### $1,250.00") == "1250"
    assert extract_gsm8k_flexible("costs $1,250.50 in total.") == "1250.5"
    assert extract_gsm8k_flexible("I do not know") is None
    assert extract_gsm8k_strict("#### -3") == extract_gsm8k_flexible("it is -3") == "-3"


@pytest.mark.parametrize(
    ("text", "letter"),
    [("答案是 C。", "C"), ("B. 因为……", "B"), ("The answer is (D).", "D"), ("选A", "A"), ("Answer: b", "B")],
)
def test_choice_letter(text: str, letter: str) -> None:
    assert extract_choice_letter(text) == letter


def test_choice_letter_ignores_words_and_absent_letters() -> None:
    assert extract_choice_letter("Because of Darwin") is None
    assert extract_choice_letter("无法确定") is None


def test_pass_at_k_estimator() -> None:
    assert pass_at_k(1, 1, 1) == 1.0 and pass_at_k(1, 0, 1) == 0.0
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(10, 3, 5) == pytest.approx(1 - (7 * 6 * 5 * 4 * 3) / (10 * 9 * 8 * 7 * 6))
