"""Per-document quality signals and the rule filters that read them, CJK-aware throughout.

Filters follow the published rules, with datatrove's defaults where it has them:
- ``gopher_quality`` (Rae et al. 2021, Table A1): word count, mean word length, symbol/word ratio,
  bullet and ellipsis lines, alphabetic words;
- ``gopher_repetition``: duplicate line/paragraph fractions, top 2-4-gram and duplicated 5-10-gram
  character fractions;
- ``c4`` (Raffel et al. 2020, document level): lorem ipsum, javascript/policy lines, curly
  brackets, too few sentences;
- ``fineweb`` (Penedo et al. 2024): lines ending in punctuation, short lines, duplicated-line
  characters, newline/word ratio;
- ``url``: blocked domains (and their subdomains) and URL substrings;
- ``safety``: keyword hits from a configurable list.

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
from urllib.parse import urlparse

import numpy as np

from contracts.events import IngestOptions

# CJK unified ideographs (+ extension A, compatibility), kana, hangul syllables.
CJK_CHAR = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af]")
_TERMINAL = (".", "!", "?", '"', "'", "”", "’", "。", "！", "？", "…", "」", "』", ":", ";", "；", "：")
_SENTENCE_END = re.compile(r"[.!?]+(?=\s|$)|[。！？]+")
_PARAGRAPHS = re.compile(r"\n{2,}")
_BULLET = ("•", "●", "○", "■", "□", "▪", "▫", "–", "-", "*", "·")
_POLICY = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")
_TOP_NGRAMS = ((2, 0.20), (3, 0.18), (4, 0.16))
_DUP_NGRAMS = ((5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10))

# Stage names in the order they run; each is one row of the retention table.
FILTER_STAGES = ("url", "gopher_quality", "gopher_repetition", "c4", "fineweb")
WEB_FILTERS = ("url", "gopher_quality", "gopher_repetition", "c4", "fineweb", "safety")
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
    top = {str(n): 0 for n, _ in _TOP_NGRAMS}
    dup = {str(n): 0 for n, _ in _DUP_NGRAMS}
    if len(words) < 2:
        return top, dup
    vocab: dict[str, int] = {}
    ids = np.fromiter(map(lambda w: vocab.setdefault(w, len(vocab)), words), np.uint64, len(words))
    lengths = np.fromiter(map(len, words), np.int64, len(words))
    with np.errstate(over="ignore"):
        for n, _ in (*_TOP_NGRAMS, *_DUP_NGRAMS):
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


def url_failure(url: str | None, o: IngestOptions) -> str | None:
    """The reason ``url`` is blocked, or None."""
    if not url or not (o.blocked_domains or o.blocked_url_substrings):
        return None
    host = (urlparse(url).hostname or "").lower().rstrip(".")
    for domain in o.blocked_domains:
        d = domain.lower().strip(".")
        if host == d or host.endswith("." + d):
            return f"domain {host} is blocked ({d})"
    low = url.lower()
    for sub in o.blocked_url_substrings:
        if sub.lower() in low:
            return f"url contains blocked {sub!r}"
    return None


def _gopher_quality(s: dict[str, Any], o: IngestOptions) -> tuple[str, str] | None:
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
    if s["bullet_line_fraction"] > o.max_bullet_line_fraction:
        return (
            "bullet_lines",
            f"bullet line fraction {s['bullet_line_fraction']} > {o.max_bullet_line_fraction}",
        )
    if s["ellipsis_line_fraction"] > o.max_ellipsis_line_fraction:
        return "ellipsis_lines", (
            f"ellipsis line fraction {s['ellipsis_line_fraction']} > {o.max_ellipsis_line_fraction}"
        )
    if s["alpha_fraction"] < o.min_alpha_fraction:
        return "alpha_fraction", f"alphabetic word fraction {s['alpha_fraction']} < {o.min_alpha_fraction}"
    # Kept here too (Gopher lists it with repetition) so the default stages catch line spam.
    if s["duplicate_line_fraction"] > o.max_duplicate_line_fraction:
        return "duplicate_lines", (
            f"duplicate line fraction {s['duplicate_line_fraction']} > {o.max_duplicate_line_fraction}"
        )
    return None


def _gopher_repetition(s: dict[str, Any], o: IngestOptions) -> tuple[str, str] | None:
    for key, limit in (
        ("duplicate_line_fraction", o.max_duplicate_line_fraction),
        ("duplicate_paragraph_fraction", o.max_duplicate_paragraph_fraction),
        ("duplicate_line_char_fraction", o.max_duplicate_line_char_fraction),
        ("duplicate_paragraph_char_fraction", o.max_duplicate_paragraph_char_fraction),
    ):
        if s[key] > limit:
            return key, f"{key.replace('_', ' ')} {s[key]} > {limit}"
    for n, limit in _TOP_NGRAMS:
        v = s["top_ngram_char_fraction"][str(n)]
        if v > limit:
            return f"top_{n}_gram", f"top {n}-gram covers {v} of the characters > {limit}"
    for n, limit in _DUP_NGRAMS:
        v = s["dup_ngram_char_fraction"][str(n)]
        if v > limit:
            return f"duplicated_{n}_grams", f"duplicated {n}-grams cover {v} of the characters > {limit}"
    return None


def _c4(s: dict[str, Any], o: IngestOptions) -> tuple[str, str] | None:
    if s["lorem_ipsum"]:
        return "lorem_ipsum", "contains 'lorem ipsum'"
    if s["curly_bracket"]:
        return "curly_bracket", "contains '{' (code or template)"
    if s["javascript_lines"]:
        return "javascript", f"{s['javascript_lines']} lines mention javascript"
    if s["policy_lines"]:
        return "policy", f"{s['policy_lines']} lines of terms/privacy/cookie policy"
    if s["sentences"] < o.c4_min_sentences:
        return "min_sentences", f"{s['sentences']} sentences < min {o.c4_min_sentences}"
    return None


def _fineweb(s: dict[str, Any], o: IngestOptions) -> tuple[str, str] | None:
    if s["line_punct_fraction"] < o.fineweb_min_line_punct_fraction:
        return "line_punct_ratio", (
            f"lines ending in punctuation {s['line_punct_fraction']} < {o.fineweb_min_line_punct_fraction}"
        )
    if s["short_line_fraction"] > o.fineweb_max_short_line_fraction:
        return (
            "short_line_ratio",
            f"short lines {s['short_line_fraction']} > {o.fineweb_max_short_line_fraction}",
        )
    if s["duplicate_line_char_fraction"] > o.fineweb_max_char_dup_fraction:
        return "char_dup_ratio", (
            f"characters in duplicated lines {s['duplicate_line_char_fraction']} > {o.fineweb_max_char_dup_fraction}"
        )
    if s["newline_word_ratio"] > o.fineweb_max_newline_word_ratio:
        return (
            "list_ratio",
            f"newlines per word {s['newline_word_ratio']} > {o.fineweb_max_newline_word_ratio}",
        )
    return None


_RULES = {
    "gopher_quality": _gopher_quality,
    "gopher_repetition": _gopher_repetition,
    "c4": _c4,
    "fineweb": _fineweb,
}


def quality_failure(s: dict[str, Any], o: IngestOptions) -> tuple[str, str, str] | None:
    """(stage, rule, reason) of the first enabled text filter the document fails, or None."""
    for stage in FILTER_STAGES:
        rule = _RULES.get(stage)
        if rule is None or stage not in o.filters:
            continue
        failed = rule(s, o)
        if failed:
            return stage, failed[0], failed[1]
    return None


def safety_failure(s: dict[str, Any], o: IngestOptions) -> str | None:
    if "safety" in o.filters and s["safety_keyword_hits"] > o.max_safety_keyword_hits:
        return f"{s['safety_keyword_hits']} safety keyword hits > {o.max_safety_keyword_hits}"
    return None


def token_estimate(signals: dict[str, Any]) -> int:
    """Rough BPE token count: ~1.3 tokens per space-separated word, ~1 per CJK character."""
    return round((signals["words"] - signals["cjk_chars"]) * 1.3 + signals["cjk_chars"])
