"""The trainer's core: plain Python (no bus, gRPC or HTTP), usable as a library."""

from services.trainer.core.data import DatasetError
from services.trainer.core.loop import TrainingCancelled
from services.trainer.core.run import CheckpointInfo, TrainConfigError, TrainJob, TrainResult, run_training

__all__ = [
    "CheckpointInfo",
    "DatasetError",
    "TrainConfigError",
    "TrainJob",
    "TrainResult",
    "TrainingCancelled",
    "run_training",
]
