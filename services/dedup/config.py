"""Settings of the dedup service (``PUYU_*`` environment variables)."""

from __future__ import annotations

from pydantic import Field

from shared.settings import CommonSettings


class DedupSettings(CommonSettings):
    dedup_auto: bool = Field(
        default=True, description="Deduplicate every ingested corpus automatically (corpus.ingested)."
    )
    dedup_workers: int = Field(
        default=1, ge=1, le=64, description="Processes computing shard signatures (dedup_distributed off)."
    )
    dedup_distributed: bool = Field(
        default=True,
        description="Split each job into work items on the bus that every dedup replica shares "
        "(signatures per shard, pairs per band range, clustering); off: the replica that takes a job "
        "runs all of it.",
    )
    dedup_bands_per_item: int = Field(
        default=4, ge=1, description="LSH bands per pairs item (14 bands, 4 per item: 4 items)."
    )
    dedup_item_ack_wait: float = Field(
        default=30.0,
        gt=0,
        description="Seconds without a heartbeat after which a work item is given to another replica "
        "(its worker died); a live worker extends it every third of that.",
    )
