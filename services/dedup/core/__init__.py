"""The dedup core: exact, near-duplicate (MinHash-LSH), paragraph- and line-level dedup, and dedup
against the persisted index of earlier datasets.

Plain Python + numpy: no bus, no gRPC. ``run_dedup`` is what the bus handlers and the CLI call;
``stages`` holds the restartable units of work the distributed path hands out.
"""

from services.dedup.core.inputs import DedupInputError
from services.dedup.core.pipeline import run_dedup

__all__ = ["DedupInputError", "run_dedup"]
