"""The registry's one entry point: versions, lineage, aliases, evaluations, promotion, deployments,
audit and outbox, as plain synchronous calls (adapters run them in worker threads)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine

from contracts.events import ArtifactRef, EventEnvelope, ModelRef, TaskResult
from services.model_registry.core.card import model_card
from services.model_registry.core.errors import NotFound
from services.model_registry.core.evaluations import Evaluations
from services.model_registry.core.outbox import Outbox, RelayResult
from services.model_registry.core.policy import PromotionPolicy
from services.model_registry.core.promotion import Promotion
from services.model_registry.core.store import Store
from services.model_registry.core.versions import Versions
from services.model_registry.core.views import (
    CHAMPION,
    AuditView,
    DeploymentOutcome,
    EvaluationOutcome,
    ModelView,
    RollbackView,
    TagsView,
    VersionView,
)


class Registry:
    def __init__(
        self,
        engine: Engine,
        policy: PromotionPolicy | None = None,
        *,
        source: str = "model-registry",
        consumer: str = "model-registry",
        artifact_root: str | None = None,
    ) -> None:
        """``artifact_root``: the artifact store's root URI; versions are registered only from
        inside it (None: from anywhere, for a registry used as a library on one's own files)."""
        self.engine = engine
        self.policy = policy or PromotionPolicy()
        store = Store(engine, consumer=consumer)
        self._store = store
        self._outbox = Outbox(store, source=source)
        self._versions = Versions(store, self._outbox, artifact_root)
        self._promotion = Promotion(store, self._outbox)
        self._evaluations = Evaluations(store, self._outbox, self._promotion, self.policy)

    def on_commit(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` after every commit that wrote outbox rows (from the committing thread):
        how the service's relay learns at once that there is something to publish."""
        self._store.on_commit(listener)

    # ----------------------------------------------------------------------------- versions
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
        quantization: dict[str, Any] | None = None,
    ) -> VersionView | None:
        """Register the next version of ``model_name``; None when ``event_id`` was already processed.
        ``quantization``: a quantised version's method and grid (its parent is ``parent``)."""
        return self._versions.register(
            model_name,
            artifact,
            run_id=run_id,
            kind=kind,
            method=method,
            parent=parent,
            adapter=adapter,
            datasets=datasets,
            hyperparameters=hyperparameters,
            train_metrics=train_metrics,
            tags=tags,
            actor=actor,
            event_id=event_id,
            causation=causation,
            tasks=tasks,
            quantization=quantization,
        )

    def get_version(
        self, model_name: str, version: int | None = None, alias: str | None = None
    ) -> VersionView:
        """One version, by number or by alias (exactly one of them)."""
        return self._versions.get(model_name, version, alias)

    def model_card(self, model_name: str, version: int | None = None, alias: str | None = None) -> str:
        """The version's card, side by side with its parent and the champion (those of them this
        registry holds)."""
        v = self.get_version(model_name, version, alias)
        others: list[VersionView] = []
        if v.parent is not None:
            with contextlib.suppress(NotFound):  # a base from elsewhere (a hub folder) has no card here
                others.append(self.get_version(v.parent.model_name, v.parent.version))
        if "champion" not in v.aliases:
            with contextlib.suppress(NotFound):  # no champion yet
                champion = self.get_version(model_name, alias="champion")
                if all((o.model_name, o.version) != (champion.model_name, champion.version) for o in others):
                    others.append(champion)
        return model_card(v, compare_with=others)

    def resolve(self, ref: str) -> VersionView:
        """``NAME`` (champion, else latest), ``NAME:VERSION`` or ``NAME@ALIAS``."""
        return self._versions.resolve(ref)

    def list_versions(self, model_name: str) -> list[VersionView]:
        return self._versions.list_versions(model_name)

    def list_models(self) -> list[ModelView]:
        return self._versions.list_models()

    def audit(self, model: str | None = None, limit: int = 200) -> list[AuditView]:
        """The newest ``limit`` audit entries, newest first (of one model, or of all)."""
        return self._versions.audit(model, limit)

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
        """Set / delete tags of a version (``version``) or of the model (None), or the model's description."""
        return self._versions.set_tags(
            model_name, version, set_=set_, delete=delete, description=description, actor=actor, reason=reason
        )

    # ----------------------------------------------------------------------------- promotion
    def set_alias(
        self, model_name: str, alias: str, version: int, *, actor: str = "api", reason: str = ""
    ) -> VersionView:
        """Point ``alias`` at ``version``; ``champion`` is a manual promotion."""
        return self._promotion.set_alias(model_name, alias, version, actor=actor, reason=reason)

    def promote(self, model_name: str, version: int, *, actor: str = "api", reason: str = "") -> VersionView:
        """Manual promotion (whatever the policy says); the reason is recorded."""
        return self._promotion.set_alias(model_name, CHAMPION, version, actor=actor, reason=reason)

    def rollback(
        self, model_name: str, *, actor: str = "api", reason: str = "manual rollback"
    ) -> RollbackView:
        """Move ``champion`` back to the champion it replaced; the current one becomes rejected."""
        return self._promotion.rollback(model_name, actor=actor, reason=reason)

    def record_evaluation(
        self,
        model: ModelRef,
        results: list[TaskResult],
        details_uri: str | None = None,
        *,
        actor: str = "api",
        event_id: str | None = None,
        causation: EventEnvelope | None = None,
    ) -> EvaluationOutcome | None:
        """Store results and apply the policy. None when ``event_id`` was already processed."""
        return self._evaluations.record_evaluation(
            model, results, details_uri, actor=actor, event_id=event_id, causation=causation
        )

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
    ) -> DeploymentOutcome | None:
        """Record a deployment; a champion that failed is rolled back. None when already processed."""
        return self._evaluations.record_deployment(
            model,
            instance,
            ok=ok,
            served_name=served_name,
            error=error,
            actor=actor,
            event_id=event_id,
            causation=causation,
        )

    # ----------------------------------------------------------------------------- outbox
    def pending_outbox(self, limit: int = 100) -> list[tuple[int, dict[str, Any]]]:
        """Unpublished outbox rows (id, envelope JSON) in commit order (for inspection and tests)."""
        return self._outbox.pending(limit)

    def relay_outbox(self, publish: Callable[[EventEnvelope], None], limit: int = 100) -> RelayResult:
        """Publish up to ``limit`` unpublished events in commit order with ``publish``; mark them sent."""
        return self._outbox.relay(publish, limit)
