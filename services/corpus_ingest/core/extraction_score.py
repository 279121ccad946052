"""The article-extraction-benchmark score (scrapinghub): word 4-gram shingles, per-page normalised.

Hand-written because the benchmark ships as a script, not a library. Tokens are ``\\w+`` matches;
TP/FP/FN are clipped shingle counts normalised by their sum (each page weighs the same);
precision and recall are averaged over pages, F1 is computed from the two averages.
"""

from __future__ import annotations

import gzip
import json
import re
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

_TOKEN = re.compile(r"\w+", re.UNICODE)


def _shingles(text: str, n: int = 4) -> Counter[tuple[str, ...]]:
    toks = _TOKEN.findall(text or "")
    return Counter(tuple(toks[i : i + n]) for i in range(len(toks) - n + 1))


def page_counts(true: str, pred: str, n: int = 4) -> tuple[float, float, float]:
    """(tp, fp, fn) of one page, normalised to sum 1 (all 0 when both are empty)."""
    t, p = _shingles(true, n), _shingles(pred, n)
    tp = sum((t & p).values())
    fp = sum((p - t).values())
    fn = sum((t - p).values())
    s = tp + fp + fn
    return (tp / s, fp / s, fn / s) if s else (0.0, 0.0, 0.0)


def score(pairs: list[tuple[str, str]]) -> dict[str, float]:
    """Precision, recall (page averages) and F1 of ``(true, predicted)`` text pairs."""
    precisions, recalls = [], []
    for true, pred in pairs:
        tp, fp, fn = page_counts(true, pred)
        precisions.append(tp / (tp + fp) if tp + fp else 0.0)
        recalls.append(tp / (tp + fn) if tp + fn else 0.0)
    p = sum(precisions) / len(precisions)
    r = sum(recalls) / len(recalls)
    return {
        "precision": round(p, 4),
        "recall": round(r, 4),
        "f1": round(2 * p * r / (p + r) if p + r else 0.0, 4),
    }


def load_pages(folder: Path) -> Iterator[tuple[str, bytes, str]]:
    """(page id, html bytes, true article body) of an extraction-dev style folder."""
    truth = json.loads((folder / "ground-truth.json").read_text())
    for page_id in sorted(truth):
        html = gzip.decompress((folder / "html" / f"{page_id}.html.gz").read_bytes())
        yield page_id, html, truth[page_id].get("articleBody", "")


def evaluate(folder: Path, extract: Callable[[bytes], str | None]) -> dict[str, float]:
    return score([(true, extract(html) or "") for _, html, true in load_pages(folder)])
