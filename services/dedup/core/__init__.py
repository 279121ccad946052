"""The dedup core: exact (normalised-text hash) and near-duplicate (MinHash-LSH) deduplication.

Plain Python + numpy: no bus, no gRPC. ``run_dedup`` is what the bus handlers and the CLI call.
"""

from services.dedup.core.pipeline import DedupInputError, run_dedup

__all__ = ["DedupInputError", "run_dedup"]
