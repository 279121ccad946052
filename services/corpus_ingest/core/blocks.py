"""Pipeline blocks, as datatrove has them: each step of the ingest is a small object.

A block reads a document (and may annotate it: normalised text, signals, language), then keeps it
(``None``) or answers why it drops it (a ``Drop``). The pipeline runs its blocks in order, stops at
the first drop and counts drops per block, so the retention table (documents in and out per
stage, the manifest's ``stages``) is the list of blocks itself.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar


@dataclass(slots=True)
class Document:
    """One document on its way through the blocks; ``record()`` is what the shards store."""

    id: str
    text: str
    source: str
    url: str | None
    meta: dict[str, Any]
    signals: dict[str, Any] | None = None
    lang: str | None = None
    lang_score: float | None = None

    def record(self) -> dict[str, Any]:
        rec: dict[str, Any] = {"id": self.id, "text": self.text, "source": self.source, "url": self.url}
        rec["meta"] = self.meta
        if self.signals is not None:
            rec["signals"] = self.signals
        if self.lang is not None:
            rec["lang"], rec["lang_score"] = self.lang, self.lang_score
        return rec


@dataclass(frozen=True, slots=True)
class Drop:
    """Why a block drops a document: the block (``filter``), the rule that failed, in words."""

    filter: str
    rule: str
    reason: str


class Block(ABC):
    # The block's row in the retention table and the ``filter`` of what it drops; None for a step
    # that only annotates (it drops nothing, so it has no row).
    name: ClassVar[str | None] = None
    # True for the filters a request chooses (``IngestOptions.filters``); the rest always run.
    optional: ClassVar[bool] = False

    @abstractmethod
    def check(self, doc: Document) -> Drop | None:
        """None to keep ``doc``, else why it is dropped."""

    def drop(self, reason: str, rule: str | None = None) -> Drop:
        """A drop by this block; ``rule`` defaults to the block's name (a single-rule filter)."""
        assert self.name is not None, f"{type(self).__name__} only annotates: it drops nothing"
        return Drop(self.name, rule or self.name, reason)


class Pipeline:
    """Blocks in order; the optional ones not in ``chosen`` keep their row but never run."""

    def __init__(self, blocks: list[Block], chosen: Iterable[str]) -> None:
        wanted = set(chosen)
        self.blocks = blocks
        self._running = [b for b in blocks if not b.optional or b.name in wanted]
        self.documents_in = 0
        self.drops_by_filter: Counter[str] = Counter()
        self.drops_by_rule: Counter[str] = Counter()

    def check(self, doc: Document) -> Drop | None:
        """Run the blocks over ``doc`` until one drops it; counted either way."""
        self.documents_in += 1
        for block in self._running:
            drop = block.check(doc)
            if drop is not None:
                self.drops_by_filter[drop.filter] += 1
                self.drops_by_rule[f"{drop.filter}.{drop.rule}"] += 1
                return drop
        return None

    def retention(self) -> list[dict[str, Any]]:
        """Documents in and out of each stage: reading, then every block that can drop.

        Each stage passes its survivors to the next: its output is its input less its drops."""
        rows = [{"stage": "read", "docs_in": self.documents_in, "docs_out": self.documents_in}]
        docs = self.documents_in
        for name in (b.name for b in self.blocks if b.name is not None):
            rows.append({"stage": name, "docs_in": docs, "docs_out": docs - self.drops_by_filter[name]})
            docs -= self.drops_by_filter[name]
        return rows
