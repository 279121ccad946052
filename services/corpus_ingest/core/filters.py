"""The ingest's blocks, each holding its own thresholds, in the order ``ingest_blocks`` runs them.

Filters follow the published rules, with datatrove's defaults where it has them:
- ``url``: blocked domains (and their subdomains) and URL substrings;
- ``gopher_quality`` (Rae et al. 2021, Table A1): word count, mean word length, symbol/word ratio,
  bullet and ellipsis lines, alphabetic words;
- ``gopher_repetition``: duplicate line/paragraph fractions, top 2-4-gram and duplicated 5-10-gram
  character fractions;
- ``c4`` (Raffel et al. 2020, document level): lorem ipsum, javascript/policy lines, curly
  brackets, too few sentences;
- ``fineweb`` (Penedo et al. 2024): lines ending in punctuation, short lines, duplicated-line
  characters, newline/word ratio;
- ``language``: the identified language is allowed, with enough confidence;
- ``safety``: keyword hits from a configurable list.

The text filters read the signals ``QualitySignals`` computes once per document.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from contracts.events import IngestOptions
from services.corpus_ingest.core.blocks import Block, Document, Drop
from services.corpus_ingest.core.langid import LanguageIdentifier
from services.corpus_ingest.core.normalize import normalize_text
from services.corpus_ingest.core.signals import DEFAULT_SAFETY_KEYWORDS, compute_signals


def _signals(doc: Document) -> dict[str, Any]:
    assert doc.signals is not None, "QualitySignals runs before the text filters"
    return doc.signals


@dataclass(frozen=True, slots=True)
class Bound:
    """One threshold rule: ``signal`` must stay at or above ``low`` / at or below ``high``."""

    signal: str
    rule: str
    words: str  # how the reason names the signal
    low: float | None = None
    high: float | None = None

    def breach(self, block: Block, signals: dict[str, Any]) -> Drop | None:
        value = signals[self.signal]
        if value is None:  # e.g. no mean word length for a text without words
            return None
        if self.low is not None and value < self.low:
            return block.drop(f"{self.words} {value} < min {self.low}", self.rule)
        if self.high is not None and value > self.high:
            return block.drop(f"{self.words} {value} > max {self.high}", self.rule)
        return None


def _first_breach(block: Block, doc: Document, bounds: tuple[Bound, ...]) -> Drop | None:
    signals = _signals(doc)
    return next((drop for bound in bounds if (drop := bound.breach(block, signals))), None)


class Normalize(Block):
    """Repaired, NFKC, clean whitespace (``normalize_text``); a document left empty is dropped."""

    name = "normalize"

    def check(self, doc: Document) -> Drop | None:
        doc.text = normalize_text(doc.text)
        return None if doc.text else self.drop("empty after normalisation")


@dataclass(frozen=True)
class UrlFilter(Block):
    name = "url"
    optional = True
    blocked_domains: tuple[str, ...] = ()
    blocked_url_substrings: tuple[str, ...] = ()

    @classmethod
    def from_options(cls, o: IngestOptions) -> UrlFilter:
        return cls(tuple(o.blocked_domains), tuple(o.blocked_url_substrings))

    def check(self, doc: Document) -> Drop | None:
        url = doc.url
        if not url or not (self.blocked_domains or self.blocked_url_substrings):
            return None
        host = (urlparse(url).hostname or "").lower().rstrip(".")
        for domain in self.blocked_domains:
            d = domain.lower().strip(".")
            if host == d or host.endswith("." + d):
                return self.drop(f"domain {host} is blocked ({d})")
        low = url.lower()
        for sub in self.blocked_url_substrings:
            if sub.lower() in low:
                return self.drop(f"url contains blocked {sub!r}")
        return None


@dataclass(frozen=True)
class QualitySignals(Block):
    """Annotates: every signal the filters below read, computed once and kept in the record."""

    safety_keywords: tuple[str, ...] = DEFAULT_SAFETY_KEYWORDS

    def check(self, doc: Document) -> Drop | None:
        doc.signals = compute_signals(doc.text, self.safety_keywords)
        return None


@dataclass(frozen=True)
class GopherQuality(Block):
    name = "gopher_quality"
    optional = True
    min_words: int = 5
    max_words: int = 100_000
    min_mean_word_length: float = 2.0
    max_mean_word_length: float = 12.0
    max_symbol_ratio: float = 0.1
    max_bullet_line_fraction: float = 0.9
    max_ellipsis_line_fraction: float = 0.3
    min_alpha_fraction: float = 0.6
    max_duplicate_line_fraction: float = 0.3

    @classmethod
    def from_options(cls, o: IngestOptions) -> GopherQuality:
        return cls(
            o.min_words,
            o.max_words,
            o.min_mean_word_length,
            o.max_mean_word_length,
            o.max_symbol_ratio,
            o.max_bullet_line_fraction,
            o.max_ellipsis_line_fraction,
            o.min_alpha_fraction,
            o.max_duplicate_line_fraction,
        )

    def check(self, doc: Document) -> Drop | None:
        return _first_breach(self, doc, self.bounds)

    @property
    def bounds(self) -> tuple[Bound, ...]:
        return (
            Bound("words", "word_count", "words", low=self.min_words, high=self.max_words),
            Bound(
                "mean_word_length",
                "mean_word_length",
                "mean word length",
                low=self.min_mean_word_length,
                high=self.max_mean_word_length,
            ),
            Bound("symbol_ratio", "symbol_ratio", "symbol ratio", high=self.max_symbol_ratio),
            Bound(
                "bullet_line_fraction",
                "bullet_lines",
                "bullet line fraction",
                high=self.max_bullet_line_fraction,
            ),
            Bound(
                "ellipsis_line_fraction",
                "ellipsis_lines",
                "ellipsis line fraction",
                high=self.max_ellipsis_line_fraction,
            ),
            Bound(
                "alpha_fraction", "alpha_fraction", "alphabetic word fraction", low=self.min_alpha_fraction
            ),
            # Kept here too (Gopher lists it with repetition) so the default stages catch line spam.
            Bound(
                "duplicate_line_fraction",
                "duplicate_lines",
                "duplicate line fraction",
                high=self.max_duplicate_line_fraction,
            ),
        )


@dataclass(frozen=True)
class GopherRepetition(Block):
    name = "gopher_repetition"
    optional = True
    max_duplicate_line_fraction: float = 0.3
    max_duplicate_paragraph_fraction: float = 0.3
    max_duplicate_line_char_fraction: float = 0.2
    max_duplicate_paragraph_char_fraction: float = 0.2
    # (n, limit): the most frequent n-gram's share of the characters, n = 2-4 ...
    top_ngram_limits: tuple[tuple[int, float], ...] = ((2, 0.20), (3, 0.18), (4, 0.16))
    # ... and the share of characters in duplicated n-grams, n = 5-10 (Gopher's values).
    dup_ngram_limits: tuple[tuple[int, float], ...] = (
        (5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10),
    )  # fmt: skip

    @classmethod
    def from_options(cls, o: IngestOptions) -> GopherRepetition:
        return cls(
            o.max_duplicate_line_fraction,
            o.max_duplicate_paragraph_fraction,
            o.max_duplicate_line_char_fraction,
            o.max_duplicate_paragraph_char_fraction,
        )

    @property
    def bounds(self) -> tuple[Bound, ...]:
        return tuple(
            Bound(key, key, key.replace("_", " "), high=limit)
            for key, limit in (
                ("duplicate_line_fraction", self.max_duplicate_line_fraction),
                ("duplicate_paragraph_fraction", self.max_duplicate_paragraph_fraction),
                ("duplicate_line_char_fraction", self.max_duplicate_line_char_fraction),
                ("duplicate_paragraph_char_fraction", self.max_duplicate_paragraph_char_fraction),
            )
        )

    def check(self, doc: Document) -> Drop | None:
        if drop := _first_breach(self, doc, self.bounds):
            return drop
        s = _signals(doc)
        for n, limit in self.top_ngram_limits:
            v = s["top_ngram_char_fraction"][str(n)]
            if v > limit:
                return self.drop(f"top {n}-gram covers {v} of the characters > {limit}", f"top_{n}_gram")
        for n, limit in self.dup_ngram_limits:
            v = s["dup_ngram_char_fraction"][str(n)]
            if v > limit:
                return self.drop(
                    f"duplicated {n}-grams cover {v} of the characters > {limit}", f"duplicated_{n}_grams"
                )
        return None


@dataclass(frozen=True)
class C4Quality(Block):
    name = "c4"
    optional = True
    min_sentences: int = 5

    def check(self, doc: Document) -> Drop | None:
        s = _signals(doc)
        if s["lorem_ipsum"]:
            return self.drop("contains 'lorem ipsum'", "lorem_ipsum")
        if s["curly_bracket"]:
            return self.drop("contains '{' (code or template)", "curly_bracket")
        if s["javascript_lines"]:
            return self.drop(f"{s['javascript_lines']} lines mention javascript", "javascript")
        if s["policy_lines"]:
            return self.drop(f"{s['policy_lines']} lines of terms/privacy/cookie policy", "policy")
        return Bound("sentences", "min_sentences", "sentences", low=self.min_sentences).breach(self, s)


@dataclass(frozen=True)
class FineWebQuality(Block):
    name = "fineweb"
    optional = True
    min_line_punct_fraction: float = 0.12
    max_short_line_fraction: float = 0.67
    max_char_dup_fraction: float = 0.01
    max_newline_word_ratio: float = 0.3

    @classmethod
    def from_options(cls, o: IngestOptions) -> FineWebQuality:
        return cls(
            o.fineweb_min_line_punct_fraction,
            o.fineweb_max_short_line_fraction,
            o.fineweb_max_char_dup_fraction,
            o.fineweb_max_newline_word_ratio,
        )

    def check(self, doc: Document) -> Drop | None:
        return _first_breach(self, doc, self.bounds)

    @property
    def bounds(self) -> tuple[Bound, ...]:
        return (
            Bound(
                "line_punct_fraction",
                "line_punct_ratio",
                "lines ending in punctuation",
                low=self.min_line_punct_fraction,
            ),
            Bound(
                "short_line_fraction", "short_line_ratio", "short lines", high=self.max_short_line_fraction
            ),
            Bound(
                "duplicate_line_char_fraction",
                "char_dup_ratio",
                "characters in duplicated lines",
                high=self.max_char_dup_fraction,
            ),
            Bound("newline_word_ratio", "list_ratio", "newlines per word", high=self.max_newline_word_ratio),
        )


@dataclass(frozen=True)
class LanguageFilter(Block):
    """Annotates the language (always), then keeps the allowed ones identified with enough confidence."""

    name = "language"
    identifier: LanguageIdentifier
    allowed: frozenset[str]
    min_score: float = 0.5

    def check(self, doc: Document) -> Drop | None:
        lang, score = self.identifier.identify(doc.text)
        doc.lang, doc.lang_score = lang, score
        if lang in self.allowed and score >= self.min_score:
            return None
        return self.drop(
            f"language {lang} (score {score}) not in {sorted(self.allowed)} with score >= {self.min_score}"
        )


@dataclass(frozen=True)
class SafetyFilter(Block):
    name = "safety"
    optional = True
    max_keyword_hits: int = 2

    def check(self, doc: Document) -> Drop | None:
        bound = Bound("safety_keyword_hits", "safety", "safety keyword hits", high=self.max_keyword_hits)
        return _first_breach(self, doc, (bound,))


def ingest_blocks(options: IngestOptions, identifier: LanguageIdentifier) -> list[Block]:
    """Every block of an ingest, in order (a filter ``options.filters`` leaves out does not run)."""
    keywords = options.safety_keywords if options.safety_keywords is not None else DEFAULT_SAFETY_KEYWORDS
    return [
        Normalize(),
        UrlFilter.from_options(options),
        QualitySignals(tuple(keywords)),
        GopherQuality.from_options(options),
        GopherRepetition.from_options(options),
        C4Quality(options.c4_min_sentences),
        FineWebQuality.from_options(options),
        LanguageFilter(
            identifier, frozenset(c.lower() for c in options.languages), options.min_language_score
        ),
        SafetyFilter(options.max_safety_keyword_hits),
    ]
