"""Settings of the model registry (``PUYU_*`` environment, see shared.settings)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from services.model_registry.core.policy import PromotionPolicy
from shared.settings import CommonSettings


class RegistrySettings(CommonSettings):
    registry_policy: PromotionPolicy = Field(
        default_factory=PromotionPolicy, description="Promotion policy (JSON in PUYU_REGISTRY_POLICY)."
    )
    registry_policy_file: Path | None = Field(
        default=None, description="YAML/JSON policy file; wins over the env."
    )
    registry_db_schema: str | None = Field(default=None, description="PostgreSQL schema (search path).")
    registry_outbox_interval: float = Field(
        default=1.0, gt=0, description="Seconds between outbox relay sweeps."
    )
    registry_grpc_port: int | None = None
    registry_http_port: int | None = None

    @property
    def registry_database_url(self) -> str:
        return self.database_url or self.sqlite_url

    def load_policy(self) -> PromotionPolicy:
        if self.registry_policy_file:
            return PromotionPolicy.from_file(self.registry_policy_file)
        return self.registry_policy
