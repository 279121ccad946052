"""The ingest core: read sources, extract and normalise text, identify language, filter, write shards.

Plain Python: no bus, no gRPC, no HTTP. ``Ingestor`` is what the bus handler calls, ``run_ingest``
what the CLI calls; the pipeline's steps are the blocks of ``filters.py``.
"""

from services.corpus_ingest.core.ingestor import IngestedDataset, Ingestor
from services.corpus_ingest.core.pipeline import IngestInputError, run_ingest

__all__ = ["IngestInputError", "IngestedDataset", "Ingestor", "run_ingest"]
