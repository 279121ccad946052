"""The finetuner's core: plain Python (no bus, gRPC or HTTP), usable as a library.

``run_finetune`` is one finetune from local folders (what ``puyu finetune`` calls); ``Finetuner`` is
what the service holds: the artifact store around it, and its ``Quantizer`` (``run_quantize`` is one
quantisation from local folders, what ``puyu quantize`` calls). ``validate`` is the one check of a request.
"""

from services.finetuner.core.data import Dataset, check_data, dataset_digest, load_dataset
from services.finetuner.core.export import merge_adapter
from services.finetuner.core.finetune import FinetuneOutcome, run_finetune
from services.finetuner.core.finetuner import Finetuner, FinetuneResult, run_id_for
from services.finetuner.core.quantizer import (
    QuantizeOutcome,
    Quantizer,
    QuantizeResult,
    check_spec,
    run_quantize,
)
from services.finetuner.core.refusals import DataError, FinetuneRefusal, InvalidInput, UnsupportedRequest
from services.finetuner.core.validation import ValidRequest, check_base, validate

__all__ = [
    "DataError",
    "Dataset",
    "FinetuneOutcome",
    "FinetuneRefusal",
    "FinetuneResult",
    "Finetuner",
    "InvalidInput",
    "QuantizeOutcome",
    "QuantizeResult",
    "Quantizer",
    "UnsupportedRequest",
    "ValidRequest",
    "check_base",
    "check_data",
    "check_spec",
    "dataset_digest",
    "load_dataset",
    "merge_adapter",
    "run_finetune",
    "run_id_for",
    "run_quantize",
    "validate",
]
