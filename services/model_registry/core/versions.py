"""Versions and their lineage: registration, reads, tags, and the views built from the rows."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from contracts.events import ArtifactRef, EventEnvelope, ModelRef, ModelRegistered
from services.model_registry.core.errors import InvalidInput, NotFound, OutsideArtifactStore
from services.model_registry.core.outbox import Outbox
from services.model_registry.core.schema import (
    Alias,
    AuditEntry,
    Deployment,
    Evaluation,
    ModelVersion,
    RegisteredModel,
    utcnow,
)
from services.model_registry.core.store import MAX_BIGINT, Store, check_version
from services.model_registry.core.views import (
    CHAMPION,
    AuditView,
    DeploymentView,
    EvaluationView,
    ModelView,
    TagsView,
    VersionStatus,
    VersionView,
)
from shared.artifacts import uri_within

NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._-]{0,127}$")
TAG_KEY_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._/-]{0,249}$")
SHA256_RE = re.compile(r"[0-9a-f]{64}")


def version_view(s: Session, v: ModelVersion) -> VersionView:
    aliases = sorted(s.scalars(select(Alias.alias).where(Alias.version_id == v.id)))
    return VersionView(
        model_name=v.model.name,
        version=v.version,
        artifact=ArtifactRef(uri=v.artifact_uri, sha256=v.artifact_sha256, size_bytes=v.artifact_size),
        format=v.format,
        run_id=v.run_id,
        kind=v.kind,
        method=v.method,
        parent=(
            ModelRef(model_name=v.parent_model, version=v.parent_version)
            if v.parent_model and v.parent_version is not None
            else None
        ),
        adapter=v.adapter,
        datasets=v.datasets,
        hyperparameters=v.hyperparameters,
        train_metrics=v.train_metrics,
        quantization=v.quantization,
        tags=v.tags,
        status=v.status,
        aliases=tuple(aliases),
        created_at=v.created_at,
        evaluations=tuple(_evaluation_view(e) for e in v.evaluations),
        deployments=tuple(_deployment_view(d) for d in v.deployments),
    )


def _evaluation_view(e: Evaluation) -> EvaluationView:
    return EvaluationView(
        task=e.task,
        metrics=e.metrics,
        primary_metric=e.primary_metric,
        higher_is_better=e.higher_is_better,
        version_hash=e.version_hash,
        num_samples=e.num_samples,
        details_uri=e.details_uri,
    )


def _deployment_view(d: Deployment) -> DeploymentView:
    return DeploymentView(
        instance=d.instance, state=d.state, served_name=d.served_name, error=d.error, time=d.time
    )


def _audit_view(e: AuditEntry) -> AuditView:
    return AuditView(
        id=e.id,
        time=e.time,
        actor=e.actor,
        action=e.action,
        model=e.model,
        version=e.version,
        reason=e.reason,
        details=e.details,
    )


def _check_registration(model_name: str, artifact: ArtifactRef, parent: ModelRef | None) -> None:
    if not NAME_RE.match(model_name or ""):
        raise InvalidInput(f"invalid model name {model_name!r} (letters, digits, '.', '_', '-'; max 128)")
    if parent is not None:
        check_version(parent.version, "parent_version")
    if not 0 <= artifact.size_bytes <= MAX_BIGINT:
        raise InvalidInput(f"artifact size_bytes must be from 0 to {MAX_BIGINT}, got {artifact.size_bytes}")
    if not artifact.uri:
        raise InvalidInput("artifact uri is required")
    if not SHA256_RE.fullmatch(artifact.sha256 or ""):
        raise InvalidInput(f"artifact sha256 must be 64 hex digits, got {artifact.sha256!r}")


def _check_inside_store(artifact_root: str | None, *artifacts: ArtifactRef | None) -> None:
    if artifact_root is None:
        return
    for artifact in artifacts:
        if artifact is not None and not uri_within(artifact.uri, artifact_root):
            raise OutsideArtifactStore(
                f"artifact {artifact.uri} is outside the artifact store {artifact_root}: only what the "
                "store holds is registered"
            )


def _check_tag_change(
    version: int | None, set_: dict[str, str], delete: list[str], description: str | None
) -> None:
    for k, val in set_.items():
        if not TAG_KEY_RE.match(k):
            raise InvalidInput(f"invalid tag key {k!r} (letters, digits, '.', '_', '-', '/'; max 250)")
        if not isinstance(val, str) or len(val) > 5000:
            raise InvalidInput(f"tag {k!r}: value must be a string of at most 5000 characters")
    if set(set_) & set(delete):
        raise InvalidInput(f"tags both set and deleted: {sorted(set(set_) & set(delete))}")
    if description is not None and version is not None:
        raise InvalidInput("a description belongs to the model, not to a version")
    if not (set_ or delete or description is not None):
        raise InvalidInput("nothing to change: give tags to set or delete, or a description")


class Versions:
    def __init__(self, store: Store, outbox: Outbox, artifact_root: str | None = None) -> None:
        self.store, self.outbox = store, outbox
        self.artifact_root = artifact_root  # None: any URI (a registry used as a library)

    # ----------------------------------------------------------------------------- register
    def register(
        self,
        model_name: str,
        artifact: ArtifactRef,
        *,
        run_id: str = "",
        kind: str = "pretrain",
        method: str = "full",
        parent: ModelRef | None = None,
        adapter: ArtifactRef | None = None,
        datasets: list[dict[str, Any]] | None = None,
        hyperparameters: dict[str, Any] | None = None,
        train_metrics: dict[str, float] | None = None,
        tags: dict[str, str] | None = None,
        actor: str = "api",
        event_id: str | None = None,
        causation: EventEnvelope | None = None,
        tasks: list[str] | None = None,
        quantization: dict[str, Any] | None = None,
    ) -> VersionView | None:
        """Register the next version of ``model_name``; None when ``event_id`` was already processed.
        ``quantization``: how it was quantised from ``parent`` (which it then needs)."""
        _check_registration(model_name, artifact, parent)
        if quantization is not None and parent is None:
            raise InvalidInput("a quantised version needs its parent: quantization lineage without a parent")
        _check_inside_store(self.artifact_root, artifact, adapter)

        def work(s: Session) -> VersionView | None:
            if self.store.already(s, event_id):
                return None
            model = self._model_for_registration(s, model_name)
            number = self._next_number(s, model)
            parent_known = self._registered(s, parent) if parent else True
            v = ModelVersion(
                model_id=model.id,
                version=number,
                artifact_uri=artifact.uri,
                artifact_sha256=artifact.sha256,
                artifact_size=artifact.size_bytes,
                format="hf-safetensors",
                run_id=run_id,
                kind=kind,
                method=method,
                parent_model=parent.model_name if parent else None,
                parent_version=parent.version if parent else None,
                adapter=adapter.model_dump() if adapter else None,
                datasets=list(datasets or []),
                hyperparameters=dict(hyperparameters or {}),
                train_metrics=dict(train_metrics or {}),
                quantization=dict(quantization) if quantization is not None else None,
                tags=dict(tags or {}),
                status=VersionStatus.CANDIDATE,
                source_event_id=event_id,
                created_at=utcnow(),
            )
            s.add(v)
            s.flush()
            s.refresh(model)
            self.store.audit(
                s,
                actor,
                "register",
                model_name,
                v.version,
                f"registered from run {run_id or '-'}",
                artifact=artifact.model_dump(),
                parent=parent.model_dump() if parent else None,
                parent_registered=parent_known,
                kind=kind,
                method=method,
                **({"quantization": quantization} if quantization is not None else {}),
            )
            ref = ModelRef(model_name=model_name, version=v.version)
            payload = ModelRegistered(
                model=ref,
                artifact=artifact,
                run_id=run_id,
                parent=parent,
                **({"tasks": tasks} if tasks else {}),
            )
            self.outbox.add(s, payload, f"registered:{model_name}:{v.version}", causation)
            return version_view(s, v)

        return self.store.retrying(work)

    def _model_for_registration(self, s: Session, name: str) -> RegisteredModel:
        model = s.scalar(select(RegisteredModel).where(RegisteredModel.name == name))
        if model is None:
            with s.begin_nested():  # a concurrent first registration wins the insert; we retry
                model = RegisteredModel(name=name, latest_version=0, created_at=utcnow())
                s.add(model)
        return model

    def _next_number(self, s: Session, model: RegisteredModel) -> int:
        # Atomic increment: the row lock (PostgreSQL) / write lock (SQLite) makes numbers race-free.
        return s.execute(
            update(RegisteredModel)
            .where(RegisteredModel.id == model.id)
            .values(latest_version=RegisteredModel.latest_version + 1)
            .returning(RegisteredModel.latest_version)
        ).scalar_one()

    def _registered(self, s: Session, ref: ModelRef) -> bool:
        model = s.scalar(select(RegisteredModel).where(RegisteredModel.name == ref.model_name))
        return (
            model is not None
            and s.scalar(
                select(ModelVersion.id).where(
                    ModelVersion.model_id == model.id, ModelVersion.version == ref.version
                )
            )
            is not None
        )

    # ----------------------------------------------------------------------------- reads
    def get(self, model_name: str, version: int | None = None, alias: str | None = None) -> VersionView:
        if (version is None) == (alias is None):
            raise InvalidInput("give exactly one of version or alias")
        if version is not None:
            check_version(version)
        with self.store.transaction() as s:
            model = self.store.model(s, model_name)
            if alias is not None:
                a = self.store.alias(s, model, alias)
                if a is None:
                    raise NotFound(f"model {model_name!r} has no alias {alias!r}")
                return version_view(s, a.version)
            assert version is not None
            return version_view(s, self.store.version(s, model, version))

    def resolve(self, ref: str) -> VersionView:
        """``NAME`` (champion, else latest), ``NAME:VERSION`` or ``NAME@ALIAS``."""
        if "@" in ref:
            name, alias = ref.split("@", 1)
            return self.get(name, alias=alias)
        if ":" in ref:
            name, num = ref.rsplit(":", 1)
            if not num.isdigit():
                raise InvalidInput(f"bad version in {ref!r}")
            return self.get(name, version=int(num))
        with self.store.transaction() as s:
            model = self.store.model(s, ref)
            a = self.store.alias(s, model, CHAMPION)
            return version_view(s, a.version if a else self.store.version(s, model, model.latest_version))

    def list_versions(self, model_name: str) -> list[VersionView]:
        with self.store.transaction() as s:
            model = self.store.model(s, model_name)
            return [version_view(s, v) for v in model.versions]

    def list_models(self) -> list[ModelView]:
        with self.store.transaction() as s:
            out = []
            for m in s.scalars(select(RegisteredModel).order_by(RegisteredModel.name)):
                aliases = {
                    x.alias: x.version.version for x in s.scalars(select(Alias).where(Alias.model_id == m.id))
                }
                out.append(
                    ModelView(
                        model_name=m.name,
                        latest_version=m.latest_version,
                        champion_version=aliases.get(CHAMPION, 0),
                        aliases=aliases,
                        description=m.description,
                        tags=m.tags,
                        created_at=m.created_at,
                    )
                )
            return out

    def audit(self, model: str | None = None, limit: int = 200) -> list[AuditView]:
        with self.store.transaction() as s:
            q = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
            if model:
                q = q.where(AuditEntry.model == model)
            return [_audit_view(e) for e in s.scalars(q)]

    # ----------------------------------------------------------------------------- tags
    def set_tags(
        self,
        model_name: str,
        version: int | None = None,
        *,
        set_: dict[str, str] | None = None,
        delete: list[str] | None = None,
        description: str | None = None,
        actor: str = "api",
        reason: str = "",
    ) -> TagsView:
        """Set / delete tags of a version (``version``) or of the model (None); returns the new tags.

        ``description`` (model only) replaces the model's description. Every change is audited with
        the values before and after.
        """
        set_, delete = dict(set_ or {}), list(delete or [])
        _check_tag_change(version, set_, delete, description)
        if version is not None:
            check_version(version)

        def work(s: Session) -> TagsView:
            model = self.store.model(s, model_name)
            target: RegisteredModel | ModelVersion = (
                model if version is None else self.store.version(s, model, version)
            )
            missing = [k for k in delete if k not in target.tags]
            if missing:
                raise NotFound(f"no tag(s) {missing} on {model_name}" + (f":{version}" if version else ""))
            before = dict(target.tags)
            tags = {k: x for k, x in before.items() if k not in delete} | set_
            target.tags = tags  # a new dict: JSON columns do not track in-place mutation
            details: dict[str, Any] = {"before": before, "after": tags}
            if description is not None:
                details["description"] = {"before": model.description, "after": description}
                model.description = description
            self.store.audit(s, actor, "tag", model_name, version, reason, **details)
            return TagsView(tags=tags, description=model.description)

        return self.store.retrying(work)
