"""The ingest core: read sources, extract and normalise text, identify language, filter, write shards.

Plain Python: no bus, no gRPC, no HTTP. ``run_ingest`` is what the bus handler and the CLI call.
"""

from services.corpus_ingest.core.pipeline import IngestInputError, run_ingest

__all__ = ["IngestInputError", "run_ingest"]
