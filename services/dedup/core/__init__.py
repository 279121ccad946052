"""The dedup core: exact, near-duplicate (MinHash-LSH), paragraph- and line-level dedup, and dedup
against the persisted index of earlier datasets.

Plain Python + numpy: no bus, no gRPC. ``Deduplicator`` is what the bus handlers call (a job in one
call, or as work items), ``run_dedup`` what the CLI calls; ``stages`` holds the restartable units
of work the items are made of.
"""

from services.dedup.core.deduplicator import Deduplicator, FinishedJob, ItemDone, StageItems, WorkItem
from services.dedup.core.inputs import DedupInputError
from services.dedup.core.pipeline import run_dedup

__all__ = [
    "DedupInputError",
    "Deduplicator",
    "FinishedJob",
    "ItemDone",
    "StageItems",
    "WorkItem",
    "run_dedup",
]
