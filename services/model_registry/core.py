"""The registry core: versions, lineage, aliases, evaluations, promotion, deployments, audit, outbox.

Plain synchronous SQLAlchemy; no bus, gRPC or HTTP here. Every state change is committed in ONE
transaction together with its audit entry, the outgoing event (outbox row) and, for events consumed
from the bus, the processed-event record, so a redelivery or a crash can neither lose nor double it.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Engine, select, text, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from contracts.events import (
    ArtifactRef,
    EventEnvelope,
    EventPayload,
    ModelAliasChanged,
    ModelApprovalRequested,
    ModelPromoted,
    ModelRef,
    ModelRegistered,
    ModelRejected,
    TaskResult,
)
from services.model_registry.db import (
    Alias,
    AuditEntry,
    Deployment,
    Evaluation,
    ModelVersion,
    OutboxMessage,
    ProcessedEvent,
    RegisteredModel,
    utcnow,
)
from services.model_registry.policy import PromotionPolicy, Result, decide

log = logging.getLogger(__name__)
T = TypeVar("T")

CHAMPION = "champion"
CANDIDATE = "candidate"  # manual mode: the version that passed the gates and awaits approval
NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._-]{0,127}$")
ALIAS_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9._-]{0,63}$")
TAG_KEY_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._/-]{0,249}$")
PROMOTE_ACTIONS = ("promote", "manual_promote", "set_alias")


class NotFound(LookupError):
    """Unknown model, version or alias."""


class InvalidInput(ValueError):
    """A request that can never succeed as given."""


def _iso(t: datetime | None) -> str:
    return t.isoformat() if t else ""


class Registry:
    def __init__(
        self,
        engine: Engine,
        policy: PromotionPolicy | None = None,
        *,
        source: str = "model-registry",
        consumer: str = "model-registry",
    ) -> None:
        self.engine = engine
        self.policy = policy or PromotionPolicy()
        self.source = source
        self.consumer = consumer
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    # ----------------------------------------------------------------------------- plumbing
    @contextmanager
    def _tx(self) -> Iterator[Session]:
        with self._sessions.begin() as s:
            yield s

    def _retrying(self, fn: Callable[[Session], T], attempts: int = 8) -> T:
        """Run ``fn`` in a transaction; a unique-constraint race or a locked SQLite is retried afresh."""
        for i in range(attempts):
            try:
                with self._tx() as s:
                    return fn(s)
            except (IntegrityError, OperationalError) as exc:
                if i == attempts - 1 or (
                    isinstance(exc, OperationalError)
                    and "locked" not in str(exc)
                    and "deadlock" not in str(exc)
                    and "serializ" not in str(exc)
                ):
                    raise
                log.info("registry transaction conflict (attempt %d), retrying: %s", i + 1, exc.orig)
                time.sleep(0.02 * (i + 1))
        raise AssertionError("unreachable")

    def _already(self, s: Session, event_id: str | None) -> bool:
        """True when this consumer already handled ``event_id``; else records it (same transaction)."""
        if event_id is None:
            return False
        if s.get(ProcessedEvent, (self.consumer, event_id)) is not None:
            return True
        s.add(ProcessedEvent(consumer=self.consumer, event_id=event_id))
        return False

    def _audit(
        self,
        s: Session,
        actor: str,
        action: str,
        model: str,
        version: int | None,
        reason: str = "",
        **details: Any,
    ) -> AuditEntry:
        entry = AuditEntry(
            actor=actor,
            action=action,
            model=model,
            version=version,
            reason=reason,
            details=details,
            time=utcnow(),
        )
        s.add(entry)
        s.flush()
        return entry

    def _outbox(
        self,
        s: Session,
        payload: EventPayload,
        event_id: str,
        causation: EventEnvelope | None,
        correlation_id: str | None = None,
    ) -> str:
        # A fact may legitimately happen again (re-promotion after a rollback): keep ids unique.
        base, n = event_id, 1
        while s.scalar(select(OutboxMessage.id).where(OutboxMessage.event_id == event_id)) is not None:
            n += 1
            event_id = f"{base}:{n}"
        env = EventEnvelope.wrap(
            payload,
            source=self.source,
            causation=causation,
            event_id=event_id,
            correlation_id=correlation_id or (causation.correlation_id if causation else None),
        )
        s.add(
            OutboxMessage(
                event_id=env.id,
                event_type=env.type,
                subject=payload.subject(),
                envelope=env.model_dump(mode="json"),
                created_at=utcnow(),
            )
        )
        return env.id

    def _model(self, s: Session, name: str) -> RegisteredModel:
        m = s.scalar(select(RegisteredModel).where(RegisteredModel.name == name))
        if m is None:
            raise NotFound(f"unknown model {name!r}")
        return m

    def _version(self, s: Session, model: RegisteredModel, version: int) -> ModelVersion:
        v = s.scalar(
            select(ModelVersion).where(ModelVersion.model_id == model.id, ModelVersion.version == version)
        )
        if v is None:
            raise NotFound(f"model {model.name!r} has no version {version}")
        return v

    def _alias(self, s: Session, model: RegisteredModel, alias: str, *, lock: bool = False) -> Alias | None:
        q = select(Alias).where(Alias.model_id == model.id, Alias.alias == alias)
        return s.scalar(q.with_for_update() if lock else q)

    def _lock_model(self, s: Session, model: RegisteredModel) -> None:
        """Serialise every decision and alias move of one model across replicas.

        PostgreSQL: a row lock (``SELECT ... FOR UPDATE``), and under READ COMMITTED every later read
        in the transaction sees what the previous holder committed. SQLite ignores FOR UPDATE, so a
        no-op write takes the database write lock instead (a stale WAL snapshot then fails with
        "database is locked" and ``_retrying`` starts the transaction afresh).
        """
        if s.get_bind().dialect.name == "sqlite":
            s.execute(
                update(RegisteredModel)
                .where(RegisteredModel.id == model.id)
                .values(latest_version=RegisteredModel.latest_version)
            )
        else:
            s.execute(select(RegisteredModel.id).where(RegisteredModel.id == model.id).with_for_update())

    def _view(self, s: Session, v: ModelVersion) -> dict[str, Any]:
        aliases = sorted(s.scalars(select(Alias.alias).where(Alias.version_id == v.id)))
        return {
            "model_name": v.model.name,
            "version": v.version,
            "artifact": {"uri": v.artifact_uri, "sha256": v.artifact_sha256, "size_bytes": v.artifact_size},
            "format": v.format,
            "run_id": v.run_id,
            "kind": v.kind,
            "method": v.method,
            "parent": (
                {"model_name": v.parent_model, "version": v.parent_version} if v.parent_model else None
            ),
            "adapter": v.adapter,
            "datasets": v.datasets,
            "hyperparameters": v.hyperparameters,
            "train_metrics": v.train_metrics,
            "tags": v.tags,
            "status": v.status,
            "aliases": aliases,
            "created_at": _iso(v.created_at),
            "evaluations": [
                {
                    "task": e.task,
                    "metrics": e.metrics,
                    "primary_metric": e.primary_metric,
                    "higher_is_better": e.higher_is_better,
                    "version_hash": e.version_hash,
                    "num_samples": e.num_samples,
                    "details_uri": e.details_uri,
                }
                for e in v.evaluations
            ],
            "deployments": [
                {
                    "instance": d.instance,
                    "state": d.state,
                    "served_name": d.served_name,
                    "error": d.error,
                    "time": _iso(d.time),
                }
                for d in v.deployments
            ],
        }

    # ----------------------------------------------------------------------------- register
    def register_version(
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
    ) -> dict[str, Any] | None:
        """Register the next version of ``model_name``; None when ``event_id`` was already processed."""
        if not NAME_RE.match(model_name or ""):
            raise InvalidInput(f"invalid model name {model_name!r} (letters, digits, '.', '_', '-'; max 128)")
        if not artifact.uri:
            raise InvalidInput("artifact uri is required")
        if not re.fullmatch(r"[0-9a-f]{64}", artifact.sha256 or ""):
            raise InvalidInput(f"artifact sha256 must be 64 hex digits, got {artifact.sha256!r}")

        def work(s: Session) -> dict[str, Any] | None:
            if self._already(s, event_id):
                return None
            model = s.scalar(select(RegisteredModel).where(RegisteredModel.name == model_name))
            if model is None:
                with s.begin_nested():  # a concurrent first registration wins the insert; we retry
                    model = RegisteredModel(name=model_name, latest_version=0, created_at=utcnow())
                    s.add(model)
            # Atomic increment: the row lock (PostgreSQL) / write lock (SQLite) makes numbers race-free.
            number = s.execute(
                update(RegisteredModel)
                .where(RegisteredModel.id == model.id)
                .values(latest_version=RegisteredModel.latest_version + 1)
                .returning(RegisteredModel.latest_version)
            ).scalar_one()
            parent_known = True
            if parent is not None:
                pm = s.scalar(select(RegisteredModel).where(RegisteredModel.name == parent.model_name))
                parent_known = (
                    pm is not None
                    and s.scalar(
                        select(ModelVersion.id).where(
                            ModelVersion.model_id == pm.id, ModelVersion.version == parent.version
                        )
                    )
                    is not None
                )
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
                tags=dict(tags or {}),
                status="candidate",
                source_event_id=event_id,
                created_at=utcnow(),
            )
            s.add(v)
            s.flush()
            s.refresh(model)
            self._audit(
                s,
                actor,
                "register",
                model_name,
                number,
                f"registered from run {run_id or '-'}",
                artifact=artifact.model_dump(),
                parent=parent.model_dump() if parent else None,
                parent_registered=parent_known,
                kind=kind,
                method=method,
            )
            ref = ModelRef(model_name=model_name, version=number)
            payload = ModelRegistered(
                model=ref,
                artifact=artifact,
                run_id=run_id,
                parent=parent,
                **({"tasks": tasks} if tasks else {}),
            )
            self._outbox(s, payload, f"registered:{model_name}:{number}", causation)
            return self._view(s, v)

        return self._retrying(work)

    # ----------------------------------------------------------------------------- reads
    def get_version(
        self, model_name: str, version: int | None = None, alias: str | None = None
    ) -> dict[str, Any]:
        if (version is None) == (alias is None):
            raise InvalidInput("give exactly one of version or alias")
        with self._tx() as s:
            model = self._model(s, model_name)
            if alias is not None:
                a = self._alias(s, model, alias)
                if a is None:
                    raise NotFound(f"model {model_name!r} has no alias {alias!r}")
                return self._view(s, a.version)
            assert version is not None
            return self._view(s, self._version(s, model, version))

    def resolve(self, ref: str) -> dict[str, Any]:
        """``NAME`` (champion, else latest), ``NAME:VERSION`` or ``NAME@ALIAS``."""
        if "@" in ref:
            name, alias = ref.split("@", 1)
            return self.get_version(name, alias=alias)
        if ":" in ref:
            name, num = ref.rsplit(":", 1)
            if not num.isdigit():
                raise InvalidInput(f"bad version in {ref!r}")
            return self.get_version(name, version=int(num))
        with self._tx() as s:
            model = self._model(s, ref)
            a = self._alias(s, model, CHAMPION)
            return self._view(s, a.version if a else self._version(s, model, model.latest_version))

    def list_versions(self, model_name: str) -> list[dict[str, Any]]:
        with self._tx() as s:
            model = self._model(s, model_name)
            return [self._view(s, v) for v in model.versions]

    def list_models(self) -> list[dict[str, Any]]:
        with self._tx() as s:
            out = []
            for m in s.scalars(select(RegisteredModel).order_by(RegisteredModel.name)):
                a = self._alias(s, m, CHAMPION)
                aliases = {
                    x.alias: x.version.version for x in s.scalars(select(Alias).where(Alias.model_id == m.id))
                }
                out.append(
                    {
                        "model_name": m.name,
                        "latest_version": m.latest_version,
                        "champion_version": a.version.version if a else 0,
                        "aliases": aliases,
                        "description": m.description,
                        "tags": m.tags,
                        "created_at": _iso(m.created_at),
                    }
                )
            return out

    def audit(self, model: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
        with self._tx() as s:
            q = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
            if model:
                q = q.where(AuditEntry.model == model)
            return [
                {
                    "id": e.id,
                    "time": _iso(e.time),
                    "actor": e.actor,
                    "action": e.action,
                    "model": e.model,
                    "version": e.version,
                    "reason": e.reason,
                    "details": e.details,
                }
                for e in s.scalars(q)
            ]

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
    ) -> dict[str, Any]:
        """Set / delete tags of a version (``version``) or of the model (None); returns the new tags.

        ``description`` (model only) replaces the model's description. Every change is audited with
        the values before and after.
        """
        set_, delete = dict(set_ or {}), list(delete or [])
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

        def work(s: Session) -> dict[str, Any]:
            model = self._model(s, model_name)
            target: RegisteredModel | ModelVersion = (
                model if version is None else self._version(s, model, version)
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
            self._audit(s, actor, "tag", model_name, version, reason, **details)
            return {"tags": tags, "description": model.description}

        return self._retrying(work)

    # ----------------------------------------------------------------------------- aliases
    def _promote(
        self,
        s: Session,
        model: RegisteredModel,
        v: ModelVersion,
        *,
        actor: str,
        action: str,
        reason: str,
        causation: EventEnvelope | None,
        event_id: str | None = None,
        **details: Any,
    ) -> str | None:
        """Point ``champion`` at ``v`` (archiving the old one) and outbox ModelPromoted; None if already there."""
        self._lock_model(s, model)
        a = self._alias(s, model, CHAMPION, lock=True)
        prev = a.version if a else None
        if prev is not None and prev.id == v.id:
            return None
        if a is None:
            s.add(
                Alias(
                    model_id=model.id,
                    alias=CHAMPION,
                    version_id=v.id,
                    previous_version=None,
                    updated_at=utcnow(),
                )
            )
        else:
            a.previous_version, a.version_id, a.updated_at = prev.version if prev else None, v.id, utcnow()
        if prev is not None and prev.status == "champion":
            prev.status = "archived"
        v.status = "champion"
        cand = self._alias(s, model, CANDIDATE, lock=True)
        if cand is not None and cand.version_id == v.id:
            s.delete(cand)
            self._audit(
                s, actor, "remove_alias", model.name, v.version, "candidate became champion", alias=CANDIDATE
            )
        entry = self._audit(
            s,
            actor,
            action,
            model.name,
            v.version,
            reason,
            alias=CHAMPION,
            previous=prev.version if prev else None,
            **details,
        )
        payload = ModelPromoted(
            model=ModelRef(model_name=model.name, version=v.version),
            alias=CHAMPION,
            artifact=ArtifactRef(uri=v.artifact_uri, sha256=v.artifact_sha256, size_bytes=v.artifact_size),
            previous=ModelRef(model_name=model.name, version=prev.version) if prev else None,
            reason=reason,
        )
        return self._outbox(
            s, payload, event_id or f"promoted:{model.name}:{v.version}:{entry.id}", causation
        )

    def _move_alias(
        self,
        s: Session,
        model: RegisteredModel,
        alias: str,
        v: ModelVersion,
        *,
        actor: str,
        reason: str,
        causation: EventEnvelope | None,
    ) -> None:
        """Point a user alias at ``v`` (caller holds the model lock); audited, announced when it moves."""
        a = self._alias(s, model, alias, lock=True)
        prev = a.version.version if a else None
        if a is None:
            s.add(Alias(model_id=model.id, alias=alias, version_id=v.id, updated_at=utcnow()))
        else:
            a.previous_version, a.version_id, a.updated_at = prev, v.id, utcnow()
        entry = self._audit(s, actor, "set_alias", model.name, v.version, reason, alias=alias, previous=prev)
        if prev != v.version:
            payload = ModelAliasChanged(
                model=ModelRef(model_name=model.name, version=v.version),
                alias=alias,
                previous=ModelRef(model_name=model.name, version=prev) if prev else None,
                actor=actor,
                reason=reason,
            )
            self._outbox(s, payload, f"alias:{model.name}:{alias}:{entry.id}", causation)

    def set_alias(
        self, model_name: str, alias: str, version: int, *, actor: str = "api", reason: str = ""
    ) -> dict[str, Any]:
        if not ALIAS_RE.match(alias or ""):
            raise InvalidInput(f"invalid alias {alias!r}")

        def work(s: Session) -> dict[str, Any]:
            model = self._model(s, model_name)
            v = self._version(s, model, version)
            if alias == CHAMPION:
                self._promote(
                    s,
                    model,
                    v,
                    actor=actor,
                    action="manual_promote",
                    reason=reason or f"champion set to version {version} by {actor}",
                    causation=None,
                )
            else:
                self._lock_model(s, model)
                self._move_alias(s, model, alias, v, actor=actor, reason=reason, causation=None)
            s.flush()
            return self._view(s, v)

        return self._retrying(work)

    def promote(
        self, model_name: str, version: int, *, actor: str = "api", reason: str = ""
    ) -> dict[str, Any]:
        """Manual promotion (whatever the policy says); the reason is recorded."""
        return self.set_alias(model_name, CHAMPION, version, actor=actor, reason=reason)

    def _previous_of(self, s: Session, model: str, version: int) -> int | None:
        """What the champion was before ``version`` last became champion (from the audit log)."""
        entries = s.scalars(
            select(AuditEntry)
            .where(
                AuditEntry.model == model,
                AuditEntry.version == version,
                AuditEntry.action.in_((*PROMOTE_ACTIONS, "rollback")),
            )
            .order_by(AuditEntry.id.desc())
        )
        for e in entries:
            if e.details.get("alias") == CHAMPION:
                prev = e.details.get("previous")
                return int(prev) if prev is not None else None
        return None

    def _restore(
        self,
        s: Session,
        model: RegisteredModel,
        *,
        actor: str,
        action: str,
        reason: str,
        causation: EventEnvelope | None,
        expect_version: int | None = None,
    ) -> dict[str, Any]:
        """Move ``champion`` back to the previous champion; the current one becomes rejected."""
        self._lock_model(s, model)
        a = self._alias(s, model, CHAMPION, lock=True)
        if a is None:
            raise InvalidInput(f"model {model.name!r} has no champion to roll back")
        current = a.version
        if expect_version is not None and current.version != expect_version:
            return {"restored": None, "note": f"version {expect_version} is not the champion"}
        if a.previous_version is None:
            if expect_version is None:
                raise InvalidInput(f"model {model.name!r} has no previous champion to roll back to")
            # A failed first deployment: nothing to restore; the alias goes, the version is rejected.
            s.delete(a)
            current.status = "rejected"
            self._audit(
                s,
                actor,
                action,
                model.name,
                current.version,
                f"{reason}; no previous champion to restore, champion alias removed",
                alias=CHAMPION,
                previous=None,
            )
            return {"restored": None, "note": "no previous champion"}
        target = self._version(s, model, a.previous_version)
        new_prev = self._previous_of(s, model.name, target.version)
        a.version_id, a.previous_version, a.updated_at = target.id, new_prev, utcnow()
        current.status, target.status = "rejected", "champion"
        full = f"{reason}; champion moved back from version {current.version} to version {target.version}"
        entry = self._audit(
            s,
            actor,
            action,
            model.name,
            target.version,
            full,
            alias=CHAMPION,
            previous=new_prev,
            rolled_back=current.version,
        )
        payload = ModelPromoted(
            model=ModelRef(model_name=model.name, version=target.version),
            alias=CHAMPION,
            artifact=ArtifactRef(
                uri=target.artifact_uri, sha256=target.artifact_sha256, size_bytes=target.artifact_size
            ),
            previous=ModelRef(model_name=model.name, version=current.version),
            reason=full,
        )
        eid = self._outbox(
            s, payload, f"promoted:{model.name}:{target.version}:restore:{entry.id}", causation
        )
        return {"restored": target.version, "rolled_back": current.version, "event_id": eid, "reason": full}

    def rollback(
        self, model_name: str, *, actor: str = "api", reason: str = "manual rollback"
    ) -> dict[str, Any]:
        def work(s: Session) -> dict[str, Any]:
            return self._restore(
                s, self._model(s, model_name), actor=actor, action="rollback", reason=reason, causation=None
            )

        return self._retrying(work)

    # ----------------------------------------------------------------------------- evaluations
    def record_evaluation(
        self,
        model: ModelRef,
        results: list[TaskResult],
        details_uri: str | None = None,
        *,
        actor: str = "api",
        event_id: str | None = None,
        causation: EventEnvelope | None = None,
    ) -> dict[str, Any] | None:
        """Store results and apply the policy. None when ``event_id`` was already processed."""
        if not results:
            raise InvalidInput("evaluation has no results")

        def work(s: Session) -> dict[str, Any] | None:
            if self._already(s, event_id):
                return None
            m = self._model(s, model.model_name)
            # Lock first: the decision must be taken against the champion as it is when we commit,
            # not one a concurrent replica is replacing (else a worse version could slip past a gate).
            self._lock_model(s, m)
            v = self._version(s, m, model.version)
            existing = {e.task: e for e in v.evaluations}
            for r in results:
                row = existing.get(r.task) or Evaluation(version_id=v.id, task=r.task)
                row.metrics, row.primary_metric, row.higher_is_better = (
                    dict(r.metrics),
                    r.primary_metric,
                    r.higher_is_better,
                )
                row.version_hash, row.num_samples, row.details_uri = (
                    r.version_hash,
                    r.num_samples,
                    details_uri,
                )
                row.created_at = utcnow()
                s.add(row)
            s.flush()
            s.refresh(v)
            cand = {
                r.task: Result(r.task, dict(r.metrics), r.primary_metric, r.higher_is_better, r.version_hash)
                for r in results
            }
            if v.status not in ("candidate", "rejected"):
                self._audit(
                    s,
                    actor,
                    "evaluate",
                    m.name,
                    v.version,
                    f"results stored; version is {v.status}, policy not applied",
                    tasks=sorted(cand),
                )
                return {"outcome": "recorded", "reason": f"version is {v.status}"}
            a = self._alias(s, m, CHAMPION)
            champ = a.version if a else None
            champ_results = (
                {
                    e.task: Result(
                        e.task, dict(e.metrics), e.primary_metric, e.higher_is_better, e.version_hash
                    )
                    for e in champ.evaluations
                }
                if champ
                else None
            )
            label = f"champion {m.name}:{champ.version}" if champ else None
            decision = decide(self.policy, cand, champ_results, label)
            details = decision.as_dict()
            if decision.promote and self.policy.mode == "auto":
                self._promote(
                    s,
                    m,
                    v,
                    actor=actor,
                    action="promote",
                    reason=decision.reason,
                    causation=causation,
                    event_id=f"promoted:{m.name}:{v.version}",
                    decision=details,
                )
                return {"outcome": "promoted", "reason": decision.reason}
            if decision.promote:  # manual mode: a person promotes through the API
                self._audit(
                    s,
                    actor,
                    "evaluate",
                    m.name,
                    v.version,
                    f"manual mode, awaiting promotion: {decision.reason}",
                    decision=details,
                )
                approval = ModelApprovalRequested(
                    model=model,
                    champion=ModelRef(model_name=m.name, version=champ.version) if champ else None,
                    reason=decision.reason,
                )
                self._outbox(s, approval, f"approval:{m.name}:{v.version}", causation)
                # `NAME@candidate` is what awaits approval (`puyu models show demo@candidate`)
                self._move_alias(
                    s,
                    m,
                    CANDIDATE,
                    v,
                    actor=actor,
                    reason=f"passed the gates, awaiting approval: {decision.reason}",
                    causation=causation,
                )
                return {"outcome": "pending", "reason": decision.reason}
            v.status = "rejected"
            self._audit(
                s,
                actor,
                "reject",
                m.name,
                v.version,
                decision.reason,
                decision=details,
                champion=champ.version if champ else None,
            )
            payload = ModelRejected(
                model=model,
                reason=decision.reason,
                champion=ModelRef(model_name=m.name, version=champ.version) if champ else None,
            )
            self._outbox(s, payload, f"rejected:{m.name}:{v.version}", causation)
            return {"outcome": "rejected", "reason": decision.reason}

        return self._retrying(work)

    # ----------------------------------------------------------------------------- deployments
    def record_deployment(
        self,
        model: ModelRef,
        instance: str,
        *,
        ok: bool,
        served_name: str | None = None,
        error: str | None = None,
        actor: str = "api",
        event_id: str | None = None,
        causation: EventEnvelope | None = None,
    ) -> dict[str, Any] | None:
        def work(s: Session) -> dict[str, Any] | None:
            if self._already(s, event_id):
                return None
            m = self._model(s, model.model_name)
            v = self._version(s, m, model.version)
            s.add(
                Deployment(
                    version_id=v.id,
                    instance=instance,
                    served_name=served_name,
                    state="ready" if ok else "failed",
                    error=error,
                    time=utcnow(),
                )
            )
            if ok:
                self._audit(
                    s,
                    actor,
                    "deployed",
                    m.name,
                    v.version,
                    f"ready on {instance} as {served_name}",
                    instance=instance,
                )
                return {"outcome": "recorded"}
            self._audit(s, actor, "deployment_failed", m.name, v.version, error or "", instance=instance)
            a = self._alias(s, m, CHAMPION)
            if a is None or a.version_id != v.id:
                return {"outcome": "recorded", "note": "not the champion; alias unchanged"}
            out = self._restore(
                s,
                m,
                actor=actor,
                action="rollback",
                reason=f"deployment of version {v.version} failed on {instance}: {error}",
                causation=causation,
                expect_version=v.version,
            )
            return {"outcome": "rolled_back", **out}

        return self._retrying(work)

    # ----------------------------------------------------------------------------- outbox
    def pending_outbox(self, limit: int = 100) -> list[tuple[int, dict[str, Any]]]:
        """Unpublished outbox rows in commit order (read-only: for inspection and tests)."""
        with self._tx() as s:
            rows = s.scalars(
                select(OutboxMessage)
                .where(OutboxMessage.published_at.is_(None))
                .order_by(OutboxMessage.id)
                .limit(limit)
            )
            return [(r.id, dict(r.envelope)) for r in rows]

    def relay_outbox(self, publish: Callable[[EventEnvelope], None], limit: int = 100) -> RelayResult:
        """Publish up to ``limit`` unpublished rows in id order with ``publish`` (blocking); mark them sent.

        One transaction holds the rows while they are published and marks them in it, so a crash
        anywhere leaves them unpublished and the next sweep (of any replica) sends them again; the
        bus drops the copies by event id (``Nats-Msg-Id``). On PostgreSQL one replica relays at a
        time (a transaction-scoped advisory lock, tried, never waited for): rows of one model are
        numbered in commit order because every change takes the model's row lock first, and a
        single relay keeps that order on the wire, so a consumer never sees a rollback before the
        promotion it undoes (SKIP LOCKED batches on several replicas would reorder them).
        A row whose publish fails stops the sweep (later rows must not overtake it).
        """
        try:
            return self._relay(publish, limit)
        except OperationalError as exc:
            if "locked" not in str(exc):
                raise
            # SQLite: a writer committed while we held an older snapshot, so the marks could not be
            # written. What went out goes again next sweep and the bus drops the copies.
            log.info("outbox: database busy, sweeping again later: %s", exc.orig)
            return RelayResult(0, busy=True)

    def _relay(self, publish: Callable[[EventEnvelope], None], limit: int) -> RelayResult:
        with self._tx() as s:
            if s.get_bind().dialect.name == "postgresql" and not s.scalar(
                text("SELECT pg_try_advisory_xact_lock(hashtext(current_schema() || '.puyu-outbox-relay'))")
            ):
                return RelayResult(0, busy=True)
            rows = s.scalars(
                select(OutboxMessage)
                .where(OutboxMessage.published_at.is_(None))
                .order_by(OutboxMessage.id)
                .limit(limit)
                .with_for_update()
            ).all()
            sent = 0
            for row in rows:
                row.attempts += 1
                try:
                    publish(EventEnvelope.model_validate(row.envelope))
                except Exception as exc:
                    row.last_error = f"{type(exc).__name__}: {exc}"[:2000]
                    log.warning("outbox: publishing %s failed, will retry: %s", row.event_id, exc)
                    return RelayResult(sent, error=row.last_error, more=True)
                row.published_at = utcnow()
                sent += 1
            return RelayResult(sent, more=len(rows) == limit)


@dataclass(frozen=True)
class RelayResult:
    sent: int
    error: str | None = None
    more: bool = False  # a full batch went out: sweep again
    busy: bool = False  # another replica holds the relay lock
