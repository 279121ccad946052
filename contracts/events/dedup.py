"""Deduplication: the job request, its work items (one job split into units any dedup replica takes),
and the fact that a deduplicated dataset exists.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from contracts.events.common import DatasetRef
from contracts.events.envelope import EventPayload, register
from contracts.events.specs import DedupOptions, PipelineSpec


@register
class DedupRequested(EventPayload):
    event_type = "dedup.requested"
    kind = "job"
    job_id: str
    dataset: DatasetRef
    options: DedupOptions = Field(default_factory=DedupOptions)
    pipeline: PipelineSpec | None = None


@register
class CorpusDeduplicated(EventPayload):
    event_type = "corpus.deduplicated"
    job_id: str
    source: DatasetRef
    dataset: DatasetRef
    documents_in: int
    documents_out: int
    exact_duplicates: int
    near_duplicates: int
    pipeline: PipelineSpec | None = None


@register
class DedupItemRequested(EventPayload):
    """One unit of a dedup job: the signatures of one input shard, the verified candidate pairs of
    one band range, or the clustering and rewrite. The job's plan and every item's result live in
    the work folder ``work_uri``; an item whose result is already there is not redone, and a
    stage's next items are requested when all of its items are done."""

    event_type = "dedup.item.requested"
    kind = "job"
    job_id: str = Field(description="The dedup job this item belongs to.")
    work_uri: str = Field(description="Artifact-store URI of the job's work folder (plan.json, results).")
    stage: Literal["signatures", "pairs", "cluster"]
    index: int = Field(ge=0, description="The item's position in its stage.")


__all__ = ["DedupRequested", "CorpusDeduplicated", "DedupItemRequested"]
