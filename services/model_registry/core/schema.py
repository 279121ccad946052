"""The registry's relational schema (SQLAlchemy 2 ORM). Alembic owns it (``migrations/``): a change
here needs a revision, and a test fails when the two disagree."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    ForeignKey,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from services.model_registry.core.views import VersionStatus


def utcnow() -> datetime:
    return datetime.now(UTC)


class StatusColumn(TypeDecorator[VersionStatus]):
    """A version's status: stored as the enum's string value, read back as the enum."""

    impl = String(16)
    cache_ok = True

    def process_bind_param(self, value: VersionStatus | None, dialect: Dialect) -> str | None:
        return None if value is None else VersionStatus(value).value

    def process_result_value(self, value: str | None, dialect: Dialect) -> VersionStatus | None:
        return None if value is None else VersionStatus(value)


class Base(DeclarativeBase):
    pass


class RegisteredModel(Base):
    __tablename__ = "registered_models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    # Counter bumped with an atomic UPDATE ... RETURNING: the race-safe source of version numbers.
    latest_version: Mapped[int] = mapped_column(Integer, default=0)
    description: Mapped[str] = mapped_column(Text, default="")  # revision 0002
    tags: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # revision 0002
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    versions: Mapped[list[ModelVersion]] = relationship(
        back_populates="model", order_by="ModelVersion.version"
    )


class ModelVersion(Base):
    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("model_id", "version", name="uq_model_versions_model_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("registered_models.id"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    artifact_uri: Mapped[str] = mapped_column(Text)
    artifact_sha256: Mapped[str] = mapped_column(String(64))
    artifact_size: Mapped[int] = mapped_column(BigInteger)
    format: Mapped[str] = mapped_column(String(32), default="hf-safetensors")
    run_id: Mapped[str] = mapped_column(String(256), default="")
    kind: Mapped[str] = mapped_column(String(32), default="pretrain")
    method: Mapped[str] = mapped_column(String(32), default="full")
    parent_model: Mapped[str | None] = mapped_column(String(128), nullable=True)
    parent_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    adapter: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    datasets: Mapped[list[Any]] = mapped_column(JSON, default=list)
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    train_metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    tags: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[VersionStatus] = mapped_column(StatusColumn(), default=VersionStatus.CANDIDATE)
    # The champion this version replaced when it last became champion: what a rollback from it
    # restores (revision 0003; before, it was read back from the audit log).
    previous_champion: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # How a quantised version was made from its parent: method, bits, group size, layout, calibration
    # (revision 0004; null for every other kind of version).
    quantization: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    source_event_id: Mapped[str | None] = mapped_column(String(256), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    model: Mapped[RegisteredModel] = relationship(back_populates="versions")
    evaluations: Mapped[list[Evaluation]] = relationship(back_populates="version", order_by="Evaluation.task")
    deployments: Mapped[list[Deployment]] = relationship(back_populates="version", order_by="Deployment.id")


class Alias(Base):
    __tablename__ = "aliases"
    __table_args__ = (UniqueConstraint("model_id", "alias", name="uq_aliases_model_alias"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("registered_models.id"), index=True)
    alias: Mapped[str] = mapped_column(String(64))
    version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    # The version number the alias pointed at before (what a rollback restores).
    previous_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    version: Mapped[ModelVersion] = relationship()


class Evaluation(Base):
    __tablename__ = "evaluations"
    __table_args__ = (UniqueConstraint("version_id", "task", name="uq_evaluations_version_task"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"), index=True)
    task: Mapped[str] = mapped_column(String(128))
    metrics: Mapped[dict[str, float]] = mapped_column(JSON)
    primary_metric: Mapped[str] = mapped_column(String(128))
    higher_is_better: Mapped[bool] = mapped_column(Boolean, default=True)
    version_hash: Mapped[str] = mapped_column(String(128))
    num_samples: Mapped[int] = mapped_column(Integer, default=0)
    details_uri: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    version: Mapped[ModelVersion] = relationship(back_populates="evaluations")


class Deployment(Base):
    __tablename__ = "deployments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"), index=True)
    instance: Mapped[str] = mapped_column(String(256))
    served_name: Mapped[str | None] = mapped_column(String(256), nullable=True)
    state: Mapped[str] = mapped_column(String(16))  # ready | failed
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    time: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    version: Mapped[ModelVersion] = relationship(back_populates="deployments")


class AuditEntry(Base):
    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    time: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    actor: Mapped[str] = mapped_column(String(256))  # event id or user
    action: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(128), index=True)
    version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class ProcessedEvent(Base):
    """Written in the same transaction as the effect: the database's own idempotency record."""

    __tablename__ = "processed_events"

    consumer: Mapped[str] = mapped_column(String(128), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    processed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class OutboxMessage(Base):
    """An event committed with the state change that caused it; the relay publishes it afterwards."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    event_id: Mapped[str] = mapped_column(String(256), unique=True)
    event_type: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(String(256))
    envelope: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    published_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
