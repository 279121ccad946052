"""Language identification with lingua, the detector built once per process per language set.

Loading every language model takes seconds: the detector covers a configured set of common
languages (plus any the allow-list names) and is built lazily on first use, then cached.
"""

from __future__ import annotations

import threading
from functools import lru_cache

from lingua import IsoCode639_1, LanguageDetector, LanguageDetectorBuilder

from shared.errors import Refusal

# Enough to tell the sample corpus's English from its other languages without loading 75 models.
DEFAULT_DETECTOR_LANGUAGES = ("en", "zh", "de", "fr", "es", "it", "pt", "ru", "ja", "ko")
_MAX_CHARS = 2000  # the language of a document is clear from its start; keeps long docs cheap
_lock = threading.Lock()


class UnknownLanguage(Refusal, ValueError):
    """A language code lingua does not know: the request can never succeed as asked."""


def _iso(code: str) -> IsoCode639_1:
    try:
        return IsoCode639_1.from_str(code.lower())
    except Exception as exc:  # lingua raises ValueError with no hint of which code
        raise UnknownLanguage(f"unknown ISO 639-1 language code {code!r}") from exc


@lru_cache(maxsize=4)
def _detector(codes: tuple[str, ...]) -> LanguageDetector:
    isos = [_iso(c) for c in codes]
    if len(isos) < 2:  # lingua needs at least two languages to choose between
        isos.append(IsoCode639_1.EN if isos[0] != IsoCode639_1.EN else IsoCode639_1.DE)
    return LanguageDetectorBuilder.from_iso_codes_639_1(*isos).build()


class LanguageIdentifier:
    def __init__(self, languages: tuple[str, ...] | list[str] = DEFAULT_DETECTOR_LANGUAGES) -> None:
        self.codes = tuple(sorted({c.lower() for c in languages}))
        for code in self.codes:
            _iso(code)  # fail fast on a bad code, before any document is read

    @property
    def detector(self) -> LanguageDetector:
        with _lock:
            return _detector(self.codes)

    def identify(self, text: str) -> tuple[str, float]:
        """(ISO 639-1 code, confidence in [0, 1]); ("und", 0.0) when nothing is recognisable."""
        values = self.detector.compute_language_confidence_values(text[:_MAX_CHARS])
        if not values or values[0].value <= 0:
            return "und", 0.0
        top = values[0]
        return top.language.iso_code_639_1.name.lower(), round(float(top.value), 4)
