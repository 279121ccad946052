"""Who is champion: promotions (by the policy or by a person), user aliases and rollbacks.

Every move takes the model's lock first, so moves of one model are serialised across replicas and
their outbox rows are numbered in the order they happened. A version remembers the champion it
replaced (``previous_champion``), which is what a rollback from it restores.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy.orm import Session

from contracts.events import ArtifactRef, EventEnvelope, ModelAliasChanged, ModelPromoted, ModelRef
from services.model_registry.core.errors import InvalidInput
from services.model_registry.core.outbox import Outbox
from services.model_registry.core.schema import Alias, ModelVersion, RegisteredModel, utcnow
from services.model_registry.core.store import Store, check_version
from services.model_registry.core.versions import version_view
from services.model_registry.core.views import (
    CANDIDATE,
    CHAMPION,
    DeploymentOutcome,
    RollbackView,
    VersionStatus,
    VersionView,
)

ALIAS_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9._-]{0,63}$")


def _artifact(v: ModelVersion) -> ArtifactRef:
    return ArtifactRef(uri=v.artifact_uri, sha256=v.artifact_sha256, size_bytes=v.artifact_size)


class Promotion:
    def __init__(self, store: Store, outbox: Outbox) -> None:
        self.store, self.outbox = store, outbox

    # ----------------------------------------------------------------------------- public
    def set_alias(
        self, model_name: str, alias: str, version: int, *, actor: str = "api", reason: str = ""
    ) -> VersionView:
        check_version(version)
        if not ALIAS_RE.match(alias or ""):
            raise InvalidInput(f"invalid alias {alias!r}")

        def work(s: Session) -> VersionView:
            model = self.store.model(s, model_name)
            v = self.store.version(s, model, version)
            if alias == CHAMPION:
                self.make_champion(
                    s,
                    model,
                    v,
                    actor=actor,
                    action="manual_promote",
                    reason=reason or f"champion set to version {version} by {actor}",
                    causation=None,
                )
            else:
                self.store.lock_model(s, model)
                self.move_alias(s, model, alias, v, actor=actor, reason=reason, causation=None)
            s.flush()
            return version_view(s, v)

        return self.store.retrying(work)

    def rollback(
        self, model_name: str, *, actor: str = "api", reason: str = "manual rollback"
    ) -> RollbackView:
        """Move ``champion`` back to the champion it replaced; the current one becomes rejected."""

        def work(s: Session) -> RollbackView:
            model = self.store.model(s, model_name)
            self.store.lock_model(s, model)
            a = self.store.alias(s, model, CHAMPION, lock=True)
            if a is None:
                raise InvalidInput(f"model {model.name!r} has no champion to roll back")
            if a.previous_version is None:
                raise InvalidInput(f"model {model.name!r} has no previous champion to roll back to")
            return self._restore(s, model, a, actor=actor, action="rollback", reason=reason, causation=None)

        return self.store.retrying(work)

    # ----------------------------------------------------------------------------- in a transaction
    def make_champion(
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
        self.store.lock_model(s, model)
        a = self.store.alias(s, model, CHAMPION, lock=True)
        prev = a.version if a else None
        if prev is not None and prev.id == v.id:
            return None
        previous = prev.version if prev else None
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
            a.previous_version, a.version_id, a.updated_at = previous, v.id, utcnow()
        if prev is not None and prev.status == VersionStatus.CHAMPION:
            prev.status = VersionStatus.ARCHIVED
        v.status, v.previous_champion = VersionStatus.CHAMPION, previous
        self._drop_candidate(s, model, v, actor)
        entry = self.store.audit(
            s, actor, action, model.name, v.version, reason, alias=CHAMPION, previous=previous, **details
        )
        payload = ModelPromoted(
            model=ModelRef(model_name=model.name, version=v.version),
            alias=CHAMPION,
            artifact=_artifact(v),
            previous=ModelRef(model_name=model.name, version=previous) if previous else None,
            reason=reason,
        )
        return self.outbox.add(
            s, payload, event_id or f"promoted:{model.name}:{v.version}:{entry.id}", causation
        )

    def _drop_candidate(self, s: Session, model: RegisteredModel, v: ModelVersion, actor: str) -> None:
        """The version awaiting approval is no longer the candidate once it is champion."""
        cand = self.store.alias(s, model, CANDIDATE, lock=True)
        if cand is not None and cand.version_id == v.id:
            s.delete(cand)
            self.store.audit(
                s, actor, "remove_alias", model.name, v.version, "candidate became champion", alias=CANDIDATE
            )

    def move_alias(
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
        a = self.store.alias(s, model, alias, lock=True)
        prev = a.version.version if a else None
        if a is None:
            s.add(Alias(model_id=model.id, alias=alias, version_id=v.id, updated_at=utcnow()))
        else:
            a.previous_version, a.version_id, a.updated_at = prev, v.id, utcnow()
        entry = self.store.audit(
            s, actor, "set_alias", model.name, v.version, reason, alias=alias, previous=prev
        )
        if prev != v.version:
            payload = ModelAliasChanged(
                model=ModelRef(model_name=model.name, version=v.version),
                alias=alias,
                previous=ModelRef(model_name=model.name, version=prev) if prev else None,
                actor=actor,
                reason=reason,
            )
            self.outbox.add(s, payload, f"alias:{model.name}:{alias}:{entry.id}", causation)

    def roll_back_failed_deployment(
        self,
        s: Session,
        model: RegisteredModel,
        v: ModelVersion,
        *,
        actor: str,
        reason: str,
        causation: EventEnvelope | None,
    ) -> DeploymentOutcome:
        """``v``, the champion, failed to deploy: restore its predecessor, or with none remove the alias."""
        self.store.lock_model(s, model)
        a = self.store.alias(s, model, CHAMPION, lock=True)
        if a is None:
            raise InvalidInput(f"model {model.name!r} has no champion to roll back")
        if a.version.version != v.version:  # a concurrent move got there first
            return DeploymentOutcome(outcome="rolled_back", note=f"version {v.version} is not the champion")
        if a.previous_version is None:
            # A failed first deployment: nothing to restore; the alias goes, the version is rejected.
            s.delete(a)
            v.status = VersionStatus.REJECTED
            self.store.audit(
                s,
                actor,
                "rollback",
                model.name,
                v.version,
                f"{reason}; no previous champion to restore, champion alias removed",
                alias=CHAMPION,
                previous=None,
            )
            return DeploymentOutcome(outcome="rolled_back", note="no previous champion")
        done = self._restore(s, model, a, actor=actor, action="rollback", reason=reason, causation=causation)
        return DeploymentOutcome(outcome="rolled_back", **done.model_dump())

    def _restore(
        self,
        s: Session,
        model: RegisteredModel,
        a: Alias,
        *,
        actor: str,
        action: str,
        reason: str,
        causation: EventEnvelope | None,
    ) -> RollbackView:
        """Move the locked champion alias ``a`` back to its previous version (the caller checked there is one)."""
        assert a.previous_version is not None
        current = a.version
        target = self.store.version(s, model, a.previous_version)
        restored_previous = target.previous_champion  # what the restored champion had replaced
        a.version_id, a.previous_version, a.updated_at = target.id, restored_previous, utcnow()
        current.status, target.status = VersionStatus.REJECTED, VersionStatus.CHAMPION
        full = f"{reason}; champion moved back from version {current.version} to version {target.version}"
        entry = self.store.audit(
            s,
            actor,
            action,
            model.name,
            target.version,
            full,
            alias=CHAMPION,
            previous=restored_previous,
            rolled_back=current.version,
        )
        payload = ModelPromoted(
            model=ModelRef(model_name=model.name, version=target.version),
            alias=CHAMPION,
            artifact=_artifact(target),
            previous=ModelRef(model_name=model.name, version=current.version),
            reason=full,
        )
        eid = self.outbox.add(
            s, payload, f"promoted:{model.name}:{target.version}:restore:{entry.id}", causation
        )
        return RollbackView(restored=target.version, rolled_back=current.version, event_id=eid, reason=full)
