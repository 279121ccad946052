"""Uncertainty of a task's metrics: standard errors and the win rate's confidence interval.

- 0/1 per-sample scores (accuracies, exact match, pass@1 greedy): the binomial standard error
  sqrt(p (1 - p) / n).
- Other per-sample means (judge ratings, pass@k's per-problem estimates): the standard error of the
  mean, sample standard deviation / sqrt(n).
- Ratios of sums (perplexity, bits per byte): a bootstrap over samples (fixed seed, so a report
  reproduces).
- Win rate: the Wilson score interval on n prompts, each prompt scoring in [0, 1] (a win 1, a tie
  or split verdict 1/2). A score in [0, 1] with mean p has variance at most p (1 - p), so the
  binomial interval is conservative for such scores; unlike a bootstrap it does not collapse to a
  point when every prompt is won.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


def binomial_stderr(p: float, n: int) -> float:
    return math.sqrt(max(p * (1.0 - p), 0.0) / n) if n > 0 else math.nan


def mean_stderr(values: Sequence[float]) -> float:
    """Standard error of the mean: sample standard deviation (n - 1) over sqrt(n)."""
    n = len(values)
    if n < 2:
        return math.nan
    mu = sum(values) / n
    var = sum((v - mu) ** 2 for v in values) / (n - 1)
    return math.sqrt(var / n)


def stderr_of(values: Sequence[float]) -> float:
    """Binomial when every score is 0 or 1, else the standard error of the mean."""
    if not values:
        return math.nan
    if all(v in (0.0, 1.0) for v in values):
        return binomial_stderr(sum(values) / len(values), len(values))
    return mean_stderr(values)


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion (successes may be fractional: ties count half)."""
    if n <= 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def bootstrap_stderr(
    n: int,
    statistic: Callable[[list[int]], dict[str, float]],
    *,
    resamples: int = 200,
    seed: int = 0,
) -> dict[str, float]:
    """Per named statistic: its standard deviation over resamples (with replacement) of the n
    sample indices."""
    if n < 2:
        return {}
    rng = random.Random(seed)
    values: dict[str, list[float]] = {}
    for _ in range(resamples):
        for name, value in statistic([rng.randrange(n) for _ in range(n)]).items():
            if math.isfinite(value):
                values.setdefault(name, []).append(value)
    out = {}
    for name, vs in values.items():
        if len(vs) >= 2:
            mu = sum(vs) / len(vs)
            out[name] = math.sqrt(sum((v - mu) ** 2 for v in vs) / (len(vs) - 1))
    return out


def beyond_noise(a: float, se_a: float | None, b: float, se_b: float | None, z: float = Z95) -> bool:
    """Whether two measurements differ by more than z combined standard errors (unknown errors
    count as zero: then any difference is marked, which is what a reader of the numbers sees)."""
    se = math.sqrt((se_a or 0.0) ** 2 + (se_b or 0.0) ** 2)
    if not all(math.isfinite(x) for x in (a, b)):
        return False
    if not math.isfinite(se):
        return False
    return abs(a - b) > z * se
