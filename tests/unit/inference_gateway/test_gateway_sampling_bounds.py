"""Sampling parameters: out-of-range, NaN and infinite values are refused naming the field; the
smallest values accepted still give finite probabilities (5e-324 used to make them NaN)."""

from __future__ import annotations

import math

import pytest
import torch

from services.inference_gateway.core.sampling import (
    MAX_REPETITION_PENALTY,
    MAX_TEMPERATURE,
    MIN_REPETITION_PENALTY,
    MIN_TEMPERATURE,
    InvalidRequest,
    SamplingParams,
    apply_penalties,
    sample_next,
    token_probs,
)

TINY = 5e-324  # the smallest positive double: 0 once cast to float32
NAN, INF = math.nan, math.inf


def logits(vocab: int = 64) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    row = torch.randn(vocab, generator=g) * 8
    row[5] = -float("inf")  # a token masked out (as a grammar does)
    return row


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", TINY * -1),
        ("temperature", -1.0),
        ("temperature", NAN),
        ("temperature", INF),
        ("temperature", MAX_TEMPERATURE * 2),
        ("top_p", NAN),
        ("top_p", -TINY),
        ("top_p", 1.5),
        ("top_p", INF),
        ("repetition_penalty", TINY),
        ("repetition_penalty", 0.0),
        ("repetition_penalty", -1.0),
        ("repetition_penalty", NAN),
        ("repetition_penalty", INF),
        ("repetition_penalty", 1e300),
        ("presence_penalty", NAN),
        ("presence_penalty", 2.5),
        ("frequency_penalty", -INF),
        ("frequency_penalty", NAN),
        ("top_k", -1),
    ],
)
def test_out_of_range_values_are_refused_naming_the_field(field: str, value: float) -> None:
    with pytest.raises(InvalidRequest, match=f"^{field} must be"):
        SamplingParams(**{field: value}).validate()  # type: ignore[arg-type]


def test_tiny_positive_temperature_samples_greedy() -> None:
    params = SamplingParams(temperature=TINY).validate()
    assert params.greedy and SamplingParams(temperature=MIN_TEMPERATURE / 2).greedy
    assert not SamplingParams(temperature=MIN_TEMPERATURE).greedy
    row = logits()
    assert sample_next(row, params, torch.Generator().manual_seed(1)) == int(torch.argmax(row))


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=MIN_TEMPERATURE),
        SamplingParams(temperature=MAX_TEMPERATURE),
        SamplingParams(temperature=MIN_TEMPERATURE, top_p=TINY),
        SamplingParams(temperature=1.0, top_p=TINY, top_k=1),
        SamplingParams(temperature=MIN_TEMPERATURE, repetition_penalty=MIN_REPETITION_PENALTY),
        SamplingParams(temperature=MIN_TEMPERATURE, repetition_penalty=MAX_REPETITION_PENALTY),
        SamplingParams(temperature=MIN_TEMPERATURE, presence_penalty=-2, frequency_penalty=-2),
        SamplingParams(temperature=MAX_TEMPERATURE, presence_penalty=2, frequency_penalty=2),
    ],
)
def test_extreme_accepted_values_give_finite_probabilities(params: SamplingParams) -> None:
    params.validate()
    row = logits()
    scores = apply_penalties(row, params, prompt=[1, 2, 3, 5], generated=[2, 9, 9, 40])
    probs = token_probs(scores, params)
    assert torch.isfinite(probs).all() and abs(float(probs.sum()) - 1) < 1e-4
    assert float(probs[5]) == 0  # a masked token stays impossible
    token = sample_next(scores, params, torch.Generator().manual_seed(3))
    assert 0 <= token < row.numel() and token != 5


def test_tiny_top_p_keeps_the_most_likely_token() -> None:
    row = logits()
    probs = token_probs(row, SamplingParams(top_p=TINY))
    assert int(torch.argmax(probs)) == int(torch.argmax(row)) and float(probs.max()) == 1.0
