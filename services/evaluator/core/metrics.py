"""Answer extraction and metric aggregation (pure functions: the part most worth unit-testing)."""

from __future__ import annotations

import math
import re
import string

# lm-evaluation-harness' "strict-match" for GSM8K: the number after '####', nothing else accepted.
_GSM8K_STRICT = re.compile(r"####\s*\$?\s*(-?[0-9][0-9,]*(?:\.[0-9]+)?)")
_PUNCT = string.punctuation + "“”‘’«»。，、！？：；"


def extract_gsm8k_strict(text: str) -> str | None:
    """The number after the first '#### ' of a generation (commas dropped, '12.0' -> '12'), else None."""
    match = _GSM8K_STRICT.search(text)
    if not match:
        return None
    return normalize_number(match.group(1))


# lm-evaluation-harness' "flexible-extract": the last number of the generation.
_NUMBER = re.compile(r"-?\$?\s*[0-9][0-9,]*(?:\.[0-9]+)?")


def extract_gsm8k_flexible(text: str) -> str | None:
    """The last number in a generation (for models that answer without the '####' format)."""
    matches = _NUMBER.findall(text)
    if not matches:
        return None
    return normalize_number(matches[-1].replace("$", ""))


# OpenCompass' first-option post-processing, simplified: an explicit "答案是 X" / "answer is X" wins,
# then the first standalone option letter.
_CHOICE_EXPLICIT = re.compile(
    r"(?:答案|answer)\s*(?:是|为|is|:|：)?\s*[(（]?([A-D])(?![A-Za-z])", re.IGNORECASE
)
_CHOICE_BARE = re.compile(r"(?<![A-Za-z])([A-D])(?![A-Za-z])")


def extract_choice_letter(text: str) -> str | None:
    match = _CHOICE_EXPLICIT.search(text) or _CHOICE_BARE.search(text)
    return match.group(1).upper() if match else None


def normalize_number(value: str) -> str:
    value = value.replace(",", "").strip().rstrip(".")
    if "." in value:
        value = value.rstrip("0").rstrip(".")
    return value or "0"


def extract_first_word(text: str) -> str | None:
    """The first whitespace-separated word of a continuation, without surrounding punctuation."""
    for word in text.split():
        word = word.strip(_PUNCT)
        if word:
            return word
    return None


EXTRACTORS = {
    "first_word": extract_first_word,
    "gsm8k_strict": extract_gsm8k_strict,
    "gsm8k_flexible": extract_gsm8k_flexible,
    "choice_letter": extract_choice_letter,
}
NUMERIC_EXTRACTORS = {"gsm8k_strict", "gsm8k_flexible"}


def truncate_at_stop(text: str, stop: list[str]) -> str:
    cut = len(text)
    for s in stop:
        i = text.find(s)
        if i != -1:
            cut = min(cut, i)
    return text[:cut]


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased pass@k estimator of the HumanEval paper: 1 - C(n-c, k) / C(n, k)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.prod((n - c - i) / (n - i) for i in range(k))


_PASS_AT = re.compile(r"pass@(\d+)$")


def pass_at_k_values(metrics: list[str]) -> dict[str, int]:
    """The k of every ``pass@k`` metric name (others are not code metrics)."""
    out = {}
    for name in metrics:
        match = _PASS_AT.match(name)
        if match:
            out[name] = int(match.group(1))
    return out


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def perplexity_metrics(total_logprob: float, total_tokens: int, total_bytes: int) -> dict[str, float]:
    """Token-weighted perplexity (exp of mean NLL per token) and bits per UTF-8 byte."""
    if total_tokens == 0:
        return {"perplexity": math.nan, "bits_per_byte": math.nan, "nll_per_token": math.nan}
    nll = -total_logprob / total_tokens
    return {
        "perplexity": math.exp(nll),
        "bits_per_byte": -total_logprob / (math.log(2) * max(total_bytes, 1)),
        "nll_per_token": nll,
    }
