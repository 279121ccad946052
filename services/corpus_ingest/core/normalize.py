"""Text normalisation: mojibake repaired (ftfy), NFKC, control characters out, whitespace collapsed.

NFKC folds full-width Latin and digits in CJK text to their ASCII forms and compatibility
ideographs to unified ones, so CJK text compares and filters like the rest.
"""

from __future__ import annotations

import re
import unicodedata

try:  # mojibake repair; without ftfy the rest of the normalisation still runs
    import ftfy
    from ftfy.badness import is_bad
except ImportError:  # pragma: no cover - ftfy is a declared dependency of the ingest extra
    ftfy = None  # type: ignore[assignment]

# Zero-width and invisible characters that carry no text but break tokenisation and dedup.
_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u00ad"), None)
_SPACES = re.compile(r"[^\S\n]+")  # any whitespace except newline
_MANY_NEWLINES = re.compile(r"\n{3,}")


# C0/C1 controls except newline and tab (tab is collapsed to a space below).
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def normalize_text(text: str) -> str:
    """NFKC; strip controls and invisible characters; one space between words; blank line between paragraphs."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if ftfy is not None and is_bad(
        text
    ):  # the cheap check first: fix_text on clean text costs time for nothing
        text = ftfy.fix_text(text, normalization="NFC")
    text = unicodedata.normalize("NFKC", text)
    text = text.translate(_INVISIBLE)
    text = _CONTROLS.sub("", text)
    lines = [_SPACES.sub(" ", line).strip() for line in text.split("\n")]
    text = "\n".join(lines)
    return _MANY_NEWLINES.sub("\n\n", text).strip()
