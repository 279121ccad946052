"""Settings shared by every service, from ``PUYU_*`` environment variables (pydantic-settings)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_home() -> Path:
    return Path.cwd() / ".puyu"


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PUYU_", env_file=".env", extra="ignore")

    home: Path = Field(
        default_factory=default_home, description="Local state: artifacts, SQLite, nats store."
    )
    nats_url: str = "nats://127.0.0.1:4222"
    # This process's identity on NATS (shared.bus.identity); none only against a NATS without users.
    nats_nkey_seed_file: Path | None = Field(
        default=None, description="NKEY seed of this process's NATS user."
    )
    nats_creds_file: Path | None = Field(default=None, description="NATS user credentials (JWT and seed).")
    nats_tls_ca_file: Path | None = Field(default=None, description="CA that signed the NATS server's cert.")
    nats_tls_cert_file: Path | None = Field(default=None, description="Client certificate, where NATS asks.")
    nats_tls_key_file: Path | None = Field(default=None, description="Key of the client certificate.")
    artifact_root: str | None = Field(
        default=None,
        description="Artifact store root URI (file:///..., s3://bucket/prefix). Default: HOME/artifacts.",
    )
    database_url: str | None = Field(default=None, description="Registry database. Default: SQLite in HOME.")
    log_level: str = "INFO"
    log_json: bool = True
    host: str = "127.0.0.1"
    # Ports: each service gets base + its offset (see shared.ports) unless overridden per service.
    grpc_port_base: int = 50050
    http_port_base: int = 8100
    registry_grpc: str | None = Field(default=None, description="host:port of the registry's gRPC server.")
    gateway_url: str | None = Field(default=None, description="Base URL of the inference gateway's HTTP API.")

    @property
    def artifact_root_uri(self) -> str:
        return self.artifact_root or (self.home / "artifacts").resolve().as_uri()

    @property
    def sqlite_url(self) -> str:
        return f"sqlite:///{(self.home / 'registry.db').resolve()}"
