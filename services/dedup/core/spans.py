"""Line- and paragraph-level dedup (the small scales of multi-scale dedup).

A span (line or paragraph) of at least ``min_chars`` characters that already appeared in an
earlier kept document is dropped: navigation, legal footers and templated blocks repeated across
pages go, the first page that had them keeps them. Spans are compared by a 16-byte blake2b of
their whitespace-collapsed casefolded text, so memory is 16 bytes per distinct span.
"""

from __future__ import annotations

import hashlib


def _key(span: str) -> bytes:
    return hashlib.blake2b(" ".join(span.casefold().split()).encode(), digest_size=16).digest()


class SpanDeduplicator:
    def __init__(self, lines: bool, paragraphs: bool, min_chars: int) -> None:
        self.lines, self.paragraphs, self.min_chars = lines, paragraphs, min_chars
        self._seen: dict[str, set[bytes]] = {"paragraphs": set(), "lines": set()}  # per scale
        self.removed = {"paragraphs": 0, "lines": 0, "chars": 0}
        self.active = lines or paragraphs

    def _filter(self, units: list[str], kind: str) -> tuple[list[str], int]:
        keep: list[str] = []
        new: set[bytes] = set()
        dropped = 0
        for u in units:
            if len(u.strip()) < self.min_chars:
                keep.append(u)
                continue
            k = _key(u)
            if k in self._seen[kind]:  # seen in an earlier document: repeats inside one document stay
                dropped += 1
                self.removed[kind] += 1
                self.removed["chars"] += len(u)
                continue
            new.add(k)
            keep.append(u)
        self._seen[kind] |= new
        return keep, dropped

    def apply(self, text: str) -> tuple[str, int]:
        """(text without spans seen in earlier documents, number of spans removed)."""
        if not (self.lines or self.paragraphs):
            return text, 0
        dropped = 0
        if self.paragraphs:
            paras, d = self._filter(text.split("\n\n"), "paragraphs")
            text, dropped = "\n\n".join(paras), dropped + d
        if self.lines:
            lines, d = self._filter(text.split("\n"), "lines")
            text, dropped = "\n".join(lines), dropped + d
        return text, dropped

    def stats(self) -> dict[str, int]:
        return {f"span_removed_{k}": v for k, v in self.removed.items()}
