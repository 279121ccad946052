"""Gopher-style quality signals and filters (Rae et al. 2021, as in datatrove's GopherQualityFilter).

Word counting is CJK-aware: each CJK character counts as one word (CJK text has no spaces), the
rest is split on whitespace. Mean word length is measured on the non-CJK words only.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from contracts.events import IngestOptions

# CJK unified ideographs (+ extension A, compatibility), kana, hangul syllables.
CJK_CHAR = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af]")


def _strip_punct(word: str) -> str:
    start, end = 0, len(word)
    while start < end and unicodedata.category(word[start]).startswith("P"):
        start += 1
    while end > start and unicodedata.category(word[end - 1]).startswith("P"):
        end -= 1
    return word[start:end]


def words_of(text: str) -> tuple[list[str], int]:
    """(non-CJK whitespace words, number of CJK characters)."""
    cjk = len(CJK_CHAR.findall(text))
    rest = CJK_CHAR.sub(" ", text) if cjk else text
    return rest.split(), cjk


def compute_signals(text: str) -> dict[str, Any]:
    words, cjk = words_of(text)
    n_words = len(words) + cjk
    # Punctuation left between CJK characters is not a word; nor is mean length meaningful when
    # the text is mostly CJK.
    stripped = [w for w in (_strip_punct(w) for w in words) if w]
    mean_len = sum(map(len, stripped)) / len(stripped) if stripped and len(stripped) >= cjk else None
    # Gopher: "#" and ellipsis per word (hash-tag and truncation spam).
    symbols = text.count("#") + text.count("...") + text.count("…")
    with_alpha = sum(1 for w in words if any(c.isalpha() for c in w)) + cjk
    lines = [ln.strip() for ln in text.split("\n") if ln.strip()]
    dup_lines = len(lines) - len(set(lines))
    return {
        "words": n_words,
        "cjk_chars": cjk,
        "mean_word_length": round(mean_len, 4) if mean_len is not None else None,
        "symbol_ratio": round(symbols / n_words, 4) if n_words else 0.0,
        "duplicate_line_fraction": round(dup_lines / len(lines), 4) if lines else 0.0,
        "alpha_fraction": round(with_alpha / n_words, 4) if n_words else 0.0,
        "chars": len(text),
    }


# Filter names in the order they run; each is one stage of the retention table.
QUALITY_FILTERS = ("word_count", "mean_word_length", "symbol_ratio", "duplicate_lines", "alpha_fraction")


def quality_failure(s: dict[str, Any], o: IngestOptions) -> tuple[str, str] | None:
    """(filter, reason) of the first filter the document fails, or None when it passes them all."""
    if s["words"] < o.min_words:
        return "word_count", f"{s['words']} words < min {o.min_words}"
    if s["words"] > o.max_words:
        return "word_count", f"{s['words']} words > max {o.max_words}"
    mwl = s["mean_word_length"]
    if mwl is not None and not (o.min_mean_word_length <= mwl <= o.max_mean_word_length):
        return "mean_word_length", (
            f"mean word length {mwl} outside [{o.min_mean_word_length}, {o.max_mean_word_length}]"
        )
    if s["symbol_ratio"] > o.max_symbol_ratio:
        return "symbol_ratio", f"symbol ratio {s['symbol_ratio']} > {o.max_symbol_ratio}"
    if s["duplicate_line_fraction"] > o.max_duplicate_line_fraction:
        return "duplicate_lines", (
            f"duplicate line fraction {s['duplicate_line_fraction']} > {o.max_duplicate_line_fraction}"
        )
    if s["alpha_fraction"] < o.min_alpha_fraction:
        return "alpha_fraction", f"alphabetic word fraction {s['alpha_fraction']} < {o.min_alpha_fraction}"
    return None


def token_estimate(signals: dict[str, Any]) -> int:
    """Rough BPE token count: ~1.3 tokens per space-separated word, ~1 per CJK character."""
    return round((signals["words"] - signals["cjk_chars"]) * 1.3 + signals["cjk_chars"])
