"""Shared fixtures of the contract tests: one valid sample payload per registered event type."""

from __future__ import annotations

from pathlib import Path

import pytest

from contracts.events import (
    ArtifactRef,
    CheckpointReady,
    CorpusDeduplicated,
    CorpusIngested,
    DatasetRef,
    DedupRequested,
    DeploymentFailed,
    DeploymentReady,
    EvaluateRequested,
    EvaluationCompleted,
    EventPayload,
    FinetuneRequested,
    IngestRequested,
    JobFailed,
    JobProgress,
    ModelPromoted,
    ModelRef,
    ModelRegistered,
    ModelRejected,
    PipelineSpec,
    QuantizationLineage,
    QuantizeRequested,
    QuantizeSpec,
    StageStats,
    TaskResult,
    TrainRequested,
    TrainSpec,
)
from contracts.events.dedup import DedupItemRequested
from contracts.events.evaluation import EvaluateShardRequested
from contracts.events.registry import ModelAliasChanged, ModelApprovalRequested
from contracts.events.training import TrainCancelRequested

ROOT = Path(__file__).resolve().parents[2]

_ART = ArtifactRef(uri="s3://puyu/artifacts/ckpt/run-1/step-10", sha256="ab" * 32, size_bytes=1234)
_DS = DatasetRef(dataset_id="demo-dedup", manifest_uri="file:///tmp/a/manifest.json", digest="cd" * 32)
_MODEL = ModelRef(model_name="puyu-demo", version=2)
_TASK = TaskResult(
    task="demo_facts", metrics={"accuracy": 0.75}, primary_metric="accuracy", version_hash="h1", num_samples=8
)


def sample_payloads() -> list[EventPayload]:
    """One instance of every event type, with nested models and optional fields filled in."""
    return [
        ModelAliasChanged(
            model=_MODEL,
            alias="staging",
            previous=ModelRef(model_name="puyu-demo", version=1),
            actor="alice",
            reason="next release",
        ),
        ModelApprovalRequested(
            model=_MODEL, champion=ModelRef(model_name="puyu-demo", version=1), reason="passes every gate"
        ),
        TrainCancelRequested(job_id="j2"),
        IngestRequested(
            job_id="j1",
            dataset_name="demo",
            sources=["/data/*.jsonl"],
            pipeline=PipelineSpec(train=TrainSpec(max_steps=5)),
        ),
        DedupRequested(job_id="j1", dataset=_DS),
        DedupItemRequested(
            job_id="j1", work_uri="file:///tmp/artifacts/dedup-work/j1-0123abcd", stage="pairs", index=2
        ),
        TrainRequested(job_id="j2", datasets=[_DS]),
        FinetuneRequested(job_id="j3", base=_MODEL, base_artifact=_ART, dataset_uri="file:///tmp/chat.jsonl"),
        QuantizeRequested(
            job_id="j5",
            base=_MODEL,
            base_artifact=_ART,
            calibration_uri="file:///tmp/a/manifest.json",
            output_model_name="puyu-demo-awq",
            spec=QuantizeSpec(method="awq", bits=4, group_size=64, calibration_samples=16),
        ),
        EvaluateRequested(job_id="j4", model=_MODEL, artifact=_ART),
        EvaluateShardRequested(
            job_id="j4",
            model=_MODEL,
            artifact=_ART,
            task="cmmlu",
            task_version="ab" * 32,
            start=0,
            stop=64,
            result_uri="file:///tmp/evals/m/v1/shards/cmmlu/0000000-0000064.jsonl",
        ),
        CorpusIngested(
            job_id="j1",
            dataset=_DS,
            documents=10,
            stages=[StageStats(stage="language", docs_in=12, docs_out=10)],
        ),
        CorpusDeduplicated(
            job_id="j1",
            source=_DS,
            dataset=_DS,
            documents_in=10,
            documents_out=8,
            exact_duplicates=1,
            near_duplicates=1,
        ),
        CheckpointReady(
            job_id="j2",
            run_id="run-1",
            model_name="puyu-demo",
            step=10,
            checkpoint=_ART,
            datasets=[_DS],
            hyperparameters={"lr": 0.003, "arch": {"layers": 2}},
            metrics={"loss": 2.5},
        ),
        CheckpointReady(  # a quantised version: its lineage names the parent and the method
            job_id="j5",
            run_id="qz-j5",
            model_name="puyu-demo",
            step=0,
            kind_of_run="quantize",
            method="awq",
            checkpoint=_ART,
            parent=_MODEL,
            quantization=QuantizationLineage(
                method="awq",
                bits=4,
                group_size=64,
                quant_method="awq",
                calibration_uri="file:///tmp/a/manifest.json",
                calibration_tokens=8192,
            ),
        ),
        ModelRegistered(
            model=_MODEL, artifact=_ART, run_id="run-1", parent=ModelRef(model_name="p", version=1)
        ),
        EvaluationCompleted(model=_MODEL, results=[_TASK], details_uri="file:///tmp/details.jsonl"),
        ModelPromoted(
            model=_MODEL,
            artifact=_ART,
            previous=ModelRef(model_name="puyu-demo", version=1),
            reason="beats champion",
        ),
        ModelRejected(model=_MODEL, champion=ModelRef(model_name="puyu-demo", version=1), reason="worse"),
        DeploymentReady(model=_MODEL, served_name="puyu-demo", instance="gw-0"),
        DeploymentFailed(model=_MODEL, instance="gw-0", error="out of memory"),
        JobProgress(job_id="j2", job_kind="train", stage="train", fraction=0.5, metrics={"loss": 3.0}),
        JobFailed(
            job_id="j2",
            service="trainer",
            source_subject="puyu.jobs.train.requested",
            error="boom",
            attempts=5,
        ),
    ]


@pytest.fixture
def samples() -> list[EventPayload]:
    return sample_payloads()
