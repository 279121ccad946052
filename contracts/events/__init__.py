"""Event contracts: the envelope, and each area's payloads (one module per area)."""

# Importing the area modules registers their events.
from contracts.events.common import ArtifactRef, DatasetRef, ModelRef, StrictModel
from contracts.events.corpus import CorpusIngested, IngestRequested, StageStats
from contracts.events.dedup import CorpusDeduplicated, DedupItemRequested, DedupRequested
from contracts.events.envelope import EVENT_TYPES, EventEnvelope, EventPayload, InvalidEvent, register
from contracts.events.evaluation import (
    EvaluateRequested,
    EvaluateShardRequested,
    EvaluationCompleted,
    TaskResult,
)
from contracts.events.inference import DeploymentFailed, DeploymentReady, ServedLoad, WorkerAnnouncement
from contracts.events.jobs import JobFailed, JobProgress
from contracts.events.registry import (
    ModelAliasChanged,
    ModelApprovalRequested,
    ModelPromoted,
    ModelRegistered,
    ModelRejected,
)
from contracts.events.specs import (
    DedupOptions,
    FinetuneSpec,
    IngestOptions,
    LoraSpec,
    ModelArchitecture,
    PipelineSpec,
    QuantizeSpec,
    TrainSpec,
)
from contracts.events.training import (
    CheckpointReady,
    FinetuneRequested,
    QuantizationLineage,
    QuantizeRequested,
    TrainCancelRequested,
    TrainRequested,
)

__all__ = [
    "ArtifactRef",
    "CheckpointReady",
    "CorpusDeduplicated",
    "CorpusIngested",
    "DatasetRef",
    "DedupItemRequested",
    "DedupOptions",
    "DedupRequested",
    "DeploymentFailed",
    "DeploymentReady",
    "EVENT_TYPES",
    "EvaluateRequested",
    "EvaluateShardRequested",
    "EvaluationCompleted",
    "EventEnvelope",
    "EventPayload",
    "FinetuneRequested",
    "FinetuneSpec",
    "IngestOptions",
    "IngestRequested",
    "InvalidEvent",
    "JobFailed",
    "JobProgress",
    "LoraSpec",
    "ModelAliasChanged",
    "ModelApprovalRequested",
    "ModelArchitecture",
    "ModelPromoted",
    "ModelRef",
    "ModelRegistered",
    "ModelRejected",
    "PipelineSpec",
    "QuantizationLineage",
    "QuantizeRequested",
    "QuantizeSpec",
    "ServedLoad",
    "StageStats",
    "StrictModel",
    "TaskResult",
    "TrainCancelRequested",
    "TrainRequested",
    "TrainSpec",
    "WorkerAnnouncement",
    "register",
]
