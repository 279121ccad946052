"""The trainer's core: plain Python (no bus, gRPC or HTTP), usable as a library.

``run_training`` is one run end to end (what ``puyu train`` calls); ``Trainer`` is what the service
holds: the artifact store, one run at a time, and the flags that stop runs.
"""

from services.trainer.core.data import DatasetError
from services.trainer.core.loop import TrainingCancelled
from services.trainer.core.run import (
    CheckpointInfo,
    TrainConfigError,
    TrainJob,
    TrainResult,
    run_training,
    validate,
)
from services.trainer.core.trainer import RunFailed, StoredCheckpoint, Trainer, TrainOutcome, run_id_for

__all__ = [
    "CheckpointInfo",
    "DatasetError",
    "RunFailed",
    "StoredCheckpoint",
    "TrainConfigError",
    "TrainJob",
    "TrainOutcome",
    "TrainResult",
    "Trainer",
    "TrainingCancelled",
    "run_id_for",
    "run_training",
    "validate",
]
