"""Settings of the dedup service (``PUYU_*`` environment variables)."""

from __future__ import annotations

from pydantic import Field

from shared.settings import CommonSettings


class DedupSettings(CommonSettings):
    dedup_auto: bool = Field(
        default=True, description="Deduplicate every ingested corpus automatically (corpus.ingested)."
    )
    dedup_workers: int = Field(default=1, ge=1, le=64, description="Processes computing shard signatures.")
