"""Text normalisation: NFKC, control characters out, whitespace collapsed, paragraphs kept."""

from __future__ import annotations

import re
import unicodedata

# Zero-width and invisible characters that carry no text but break tokenisation and dedup.
_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u00ad"), None)
_SPACES = re.compile(r"[^\S\n]+")  # any whitespace except newline
_MANY_NEWLINES = re.compile(r"\n{3,}")


def _strip_controls(text: str) -> str:
    # Cc covers C0/C1 controls; keep newline and tab (tab is collapsed to a space below).
    return "".join(ch for ch in text if ch in "\n\t" or unicodedata.category(ch) != "Cc")


def normalize_text(text: str) -> str:
    """NFKC; strip controls and invisible characters; one space between words; blank line between paragraphs."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = unicodedata.normalize("NFKC", text)
    text = text.translate(_INVISIBLE)
    text = _strip_controls(text)
    lines = [_SPACES.sub(" ", line).strip() for line in text.split("\n")]
    text = "\n".join(lines)
    return _MANY_NEWLINES.sub("\n\n", text).strip()
