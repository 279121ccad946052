"""Settings shared by every service, from ``PUYU_*`` environment variables (pydantic-settings)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
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
    data_roots: list[str] | None = Field(
        default=None,
        description="Folders (or URIs) jobs may read their inputs from, besides the artifact store "
        "(JSON list in PUYU_DATA_ROOTS). Default: HOME/sample-corpus and HOME/data.",
    )
    database_url: str | None = Field(default=None, description="Registry database. Default: SQLite in HOME.")
    log_level: str = "INFO"
    log_json: bool = True
    host: str = "127.0.0.1"
    # Ports: each service gets base + its offset (see shared.ports) unless overridden per service.
    grpc_port_base: int = 50050
    http_port_base: int = 8100
    # Callers of this service's HTTP and gRPC APIs (shared.auth): hashed tokens with roles.
    auth_tokens_file: Path | None = Field(
        default=None, description="JSON lines {principal, role, sha256} of the tokens this service accepts."
    )
    auth_required: bool = Field(
        default=True,
        description="false: with no token configured at all, callers are let in as an anonymous admin "
        "(development only; ignored once any token is configured).",
    )
    # What this process sends as a client (service to service, the CLI).
    auth_token: SecretStr | None = Field(default=None, description="This process's bearer token.")
    auth_token_file: Path | None = Field(default=None, description="File holding this process's token.")
    # TLS on gRPC and HTTP: served when the certificate and key are set; clients verify with the CA.
    tls_cert_file: Path | None = Field(
        default=None, description="Server certificate (PEM) for gRPC and HTTP."
    )
    tls_key_file: Path | None = Field(default=None, description="Key of the server certificate (PEM).")
    tls_client_ca_file: Path | None = Field(
        default=None, description="CA of client certificates; set: clients must present one."
    )
    tls_ca_file: Path | None = Field(default=None, description="CA that clients verify servers against.")
    registry_grpc: str | None = Field(default=None, description="host:port of the registry's gRPC server.")
    gateway_url: str | None = Field(default=None, description="Base URL of the inference gateway's HTTP API.")

    @property
    def artifact_root_uri(self) -> str:
        return self.artifact_root or (self.home / "artifacts").resolve().as_uri()

    def client_token(self) -> str | None:
        """The bearer token this process sends to other services (None: it has none)."""
        if self.auth_token is not None:
            return self.auth_token.get_secret_value() or None
        if self.auth_token_file is not None:
            return self.auth_token_file.read_text(encoding="utf-8").strip() or None
        return None

    @property
    def tls_clients(self) -> bool:
        """Whether this process's clients speak TLS to the other services."""
        return self.tls_ca_file is not None or self.tls_cert_file is not None

    @property
    def read_roots(self) -> list[str]:
        """Where jobs may read: the artifact store, then the data roots (the demo's by default)."""
        demo = [str(self.home / "sample-corpus"), str(self.home / "data")]
        data = self.data_roots if self.data_roots is not None else demo
        return [self.artifact_root_uri, *data]

    @property
    def sqlite_url(self) -> str:
        return f"sqlite:///{(self.home / 'registry.db').resolve()}"


class LaunchSettings(CommonSettings):
    """How a controller service (trainer, finetuner) launches its runs (``shared.launch``).

    A launcher may read its own ``PUYU_<NAME>_*`` settings besides these (e.g. the Slurm partition)."""

    launcher: str = Field(
        default="local",
        description="local (in this process, the default) | torchrun (N processes on this node) | "
        "slurm | kubernetes.",
    )
    launch_nprocs_per_node: int = Field(default=1, ge=1, description="Processes (ranks) per node.")
    launch_nnodes: int = Field(default=1, ge=1, description="Nodes per run (slurm, kubernetes).")
    launch_gpus_per_node: int = Field(default=0, ge=0, description="GPUs each node asks for (0: none).")
    launch_runs_dir: Path | None = Field(
        default=None,
        description="Where run folders live; every node of a run must see it at the same path "
        "(a shared filesystem for slurm and kubernetes). Default: the artifact store's runs/ folder "
        "(its local staging folder when the store is remote).",
    )
    launch_grace_seconds: float = Field(
        default=30.0, gt=0, description="After SIGTERM, seconds a cancelled run has before SIGKILL."
    )
    launch_poll_seconds: float = Field(
        default=0.5, gt=0, description="Seconds between a controller's looks at its run."
    )
