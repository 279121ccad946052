"""Per-document quality signals, CJK-aware throughout: what the filter blocks (``filters.py``) read.

Words: each CJK character is one word (CJK text has no spaces), the rest is split on whitespace.
Sentences end at Latin or CJK terminal punctuation. Signals are computed once per document and
kept in its record, so users can set their own thresholds later.
"""

from __future__ import annotations

import functools
import re
import sys
import unicodedata
from collections.abc import Iterable
from typing import Any

import numpy as np

# CJK unified ideographs (+ extension A, compatibility), kana, hangul syllables.
CJK_CHAR = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af]")
_TERMINAL = (".", "!", "?", '"', "'", "”", "’", "。", "！", "？", "…", "」", "』", ":", ";", "；", "：")
_SENTENCE_END = re.compile(r"[.!?]+(?=\s|$)|[。！？]+")
_PARAGRAPHS = re.compile(r"\n{2,}")
_BULLET = ("•", "●", "○", "■", "□", "▪", "▫", "–", "-", "*", "·")
_POLICY = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")
# Gopher's repetition n-grams: the most frequent one (n = 2-4) and every duplicated one (n = 5-10).
TOP_NGRAM_SIZES = (2, 3, 4)
DUP_NGRAM_SIZES = (5, 6, 7, 8, 9, 10)

# A small default list; deployments pass their own (``IngestOptions.safety_keywords``).
DEFAULT_SAFETY_KEYWORDS = (
    "porn", "xxx", "hardcore sex", "escort service", "online casino", "viagra",
    "色情", "成人视频", "赌博", "博彩", "裸聊", "代孕",
)  # fmt: skip


@functools.cache
def _punctuation() -> str:
    """Every Unicode punctuation character (categories P*), built once (~0.3 s) on first use."""
    return "".join(c for c in map(chr, range(sys.maxunicode + 1)) if unicodedata.category(c).startswith("P"))


def words_of(text: str) -> tuple[list[str], int]:
    """(non-CJK whitespace words, number of CJK characters)."""
    cjk = len(CJK_CHAR.findall(text))
    rest = CJK_CHAR.sub(" ", text) if cjk else text
    return rest.split(), cjk


_CJK_CLASS = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af"
_WORD_SEQ = re.compile(f"[{_CJK_CLASS}]|[^\\s{_CJK_CLASS}]+")


def word_sequence(text: str) -> list[str]:
    """Words in order, each CJK character one word: what the n-gram statistics count."""
    return _WORD_SEQ.findall(text) if CJK_CHAR.search(text) else text.split()


def count_sentences(text: str) -> int:
    ends = len(_SENTENCE_END.findall(text))
    tail = text.rstrip()
    return ends + (1 if tail and not tail.endswith(_TERMINAL) else 0)


def _duplicates(items: Iterable[str]) -> tuple[int, int]:
    """(duplicate items, characters in duplicates): every repeat after the first occurrence."""
    seen: set[str] = set()
    n = chars = 0
    for x in items:
        if x in seen:
            n += 1
            chars += len(x)
        else:
            seen.add(x)
    return n, chars


def _ngram_stats(words: list[str]) -> tuple[dict[str, int], dict[str, int]]:
    """(top n-gram characters per n in 2-4, duplicated n-gram characters per n in 5-10), vectorised.

    N-grams are hashed from word ids; a duplicated n-gram is any occurrence after the first, and
    its characters are the union of the words such occurrences cover (Gopher's definition).
    """
    top = {str(n): 0 for n in TOP_NGRAM_SIZES}
    dup = {str(n): 0 for n in DUP_NGRAM_SIZES}
    if len(words) < 2:
        return top, dup
    vocab: dict[str, int] = {}
    ids = np.fromiter(map(lambda w: vocab.setdefault(w, len(vocab)), words), np.uint64, len(words))
    lengths = np.fromiter(map(len, words), np.int64, len(words))
    with np.errstate(over="ignore"):
        for n in (*TOP_NGRAM_SIZES, *DUP_NGRAM_SIZES):
            m = len(words) - n + 1
            if m < 2:
                continue
            h = np.zeros(m, np.uint64)
            for j in range(n):
                h = h * np.uint64(0x100000001B3) + ids[j : j + m] + np.uint64(1)
            _, first, inv, counts = np.unique(h, return_index=True, return_inverse=True, return_counts=True)
            if n <= 4:
                g = int(np.argmax(counts))
                if counts[g] > 1:
                    j = int(first[g])
                    top[str(n)] = int(counts[g]) * (int(lengths[j : j + n].sum()) + n - 1)
                continue
            starts = np.flatnonzero(first[inv] != np.arange(m))
            if starts.size:
                cover = np.zeros(len(words) + 1, np.int64)
                np.add.at(cover, starts, 1)
                np.add.at(cover, starts + n, -1)
                dup[str(n)] = int(lengths[np.cumsum(cover[:-1]) > 0].sum())
    return top, dup


def _r(x: float) -> float:
    return round(x, 4)


def compute_signals(text: str, safety_keywords: Iterable[str] = DEFAULT_SAFETY_KEYWORDS) -> dict[str, Any]:
    words, cjk = words_of(text)
    n_words = len(words) + cjk
    chars = len(text) or 1
    # Punctuation left between CJK characters is not a word; nor is mean length meaningful when
    # the text is mostly CJK.
    punctuation = _punctuation()  # str.strip: one C call per word
    stripped = [w for w in (w.strip(punctuation) for w in words) if w]
    mean_len = sum(map(len, stripped)) / len(stripped) if stripped and len(stripped) >= cjk else None
    symbols = text.count("#") + text.count("...") + text.count("…")
    with_alpha = sum(1 for w in words if any(c.isalpha() for c in w)) + cjk
    lines = [ln.strip() for ln in text.split("\n") if ln.strip()]
    n_lines = len(lines) or 1
    paragraphs = [p for p in _PARAGRAPHS.split(text.strip()) if p]
    dup_lines, dup_line_chars = _duplicates(lines)
    dup_paras, dup_para_chars = _duplicates(paragraphs)
    top, dup = _ngram_stats(word_sequence(text) if n_words else [])
    lower = text.casefold()
    s: dict[str, Any] = {
        "words": n_words,
        "cjk_chars": cjk,
        "chars": len(text),
        "lines": len(lines),
        "sentences": count_sentences(text),
        "mean_word_length": _r(mean_len) if mean_len is not None else None,
        "symbol_ratio": _r(symbols / n_words) if n_words else 0.0,
        "alpha_fraction": _r(with_alpha / n_words) if n_words else 0.0,
        "bullet_line_fraction": _r(sum(ln.startswith(_BULLET) for ln in lines) / n_lines),
        "ellipsis_line_fraction": _r(sum(ln.endswith(("...", "…")) for ln in lines) / n_lines),
        "duplicate_line_fraction": _r(dup_lines / n_lines) if lines else 0.0,
        "duplicate_paragraph_fraction": _r(dup_paras / len(paragraphs)) if paragraphs else 0.0,
        "duplicate_line_char_fraction": _r(dup_line_chars / chars),
        "duplicate_paragraph_char_fraction": _r(dup_para_chars / chars),
        "top_ngram_char_fraction": {n: _r(v / chars) for n, v in top.items()},
        "dup_ngram_char_fraction": {n: _r(v / chars) for n, v in dup.items()},
        "line_punct_fraction": _r(sum(ln.endswith(_TERMINAL) for ln in lines) / n_lines) if lines else 0.0,
        "short_line_fraction": _r(sum(len(ln) <= 30 for ln in lines) / n_lines) if lines else 0.0,
        "newline_word_ratio": _r(text.count("\n") / n_words) if n_words else 0.0,
        "lorem_ipsum": "lorem ipsum" in lower,
        "curly_bracket": "{" in text,
        "javascript_lines": sum("javascript" in ln.casefold() for ln in lines),
        "policy_lines": sum(any(p in ln.casefold() for p in _POLICY) for ln in lines),
        "safety_keyword_hits": sum(lower.count(k.casefold()) for k in safety_keywords),
    }
    return s


def token_estimate(signals: dict[str, Any]) -> int:
    """Rough BPE token count: ~1.3 tokens per space-separated word, ~1 per CJK character."""
    return round((signals["words"] - signals["cjk_chars"]) * 1.3 + signals["cjk_chars"])
