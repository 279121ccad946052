"""Evaluations and deployments as they come back: results are stored and the promotion policy
decides (promote, await a person's approval, or reject); a champion that fails to deploy is rolled
back."""

from __future__ import annotations

from sqlalchemy.orm import Session

from contracts.events import EventEnvelope, ModelApprovalRequested, ModelRef, ModelRejected, TaskResult
from services.model_registry.core.errors import InvalidInput, NotFound
from services.model_registry.core.outbox import Outbox
from services.model_registry.core.parent_gate import combine, decide_against_parent
from services.model_registry.core.policy import Decision, PromotionPolicy, Result, decide
from services.model_registry.core.promotion import Promotion
from services.model_registry.core.schema import Deployment, Evaluation, ModelVersion, RegisteredModel, utcnow
from services.model_registry.core.store import Store, check_version
from services.model_registry.core.views import (
    CANDIDATE,
    CHAMPION,
    DeploymentOutcome,
    EvaluationOutcome,
    VersionStatus,
)

OPEN_TO_DECISION = (VersionStatus.CANDIDATE, VersionStatus.REJECTED)  # a champion or archived one is not


def _result(e: Evaluation) -> Result:
    return Result(e.task, dict(e.metrics), e.primary_metric, e.higher_is_better, e.version_hash)


class Evaluations:
    def __init__(self, store: Store, outbox: Outbox, promotion: Promotion, policy: PromotionPolicy) -> None:
        self.store, self.outbox, self.promotion, self.policy = store, outbox, promotion, policy

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
    ) -> EvaluationOutcome | None:
        """Store results and apply the policy. None when ``event_id`` was already processed."""
        if not results:
            raise InvalidInput("evaluation has no results")
        check_version(model.version, "model version")

        def work(s: Session) -> EvaluationOutcome | None:
            if self.store.already(s, event_id):
                return None
            m = self.store.model(s, model.model_name)
            # Lock first: the decision must be taken against the champion as it is when we commit,
            # not one a concurrent replica is replacing (else a worse version could slip past a gate).
            self.store.lock_model(s, m)
            v = self.store.version(s, m, model.version)
            self._store_results(s, v, results, details_uri)
            if v.status not in OPEN_TO_DECISION:
                reason = f"results stored; version is {v.status}, policy not applied"
                self.store.audit(
                    s, actor, "evaluate", m.name, v.version, reason, tasks=sorted({r.task for r in results})
                )
                return EvaluationOutcome(outcome="recorded", reason=f"version is {v.status}")
            a = self.store.alias(s, m, CHAMPION)
            champion = a.version if a else None
            candidate = {
                r.task: Result(
                    r.task,
                    dict(r.metrics),
                    r.primary_metric,
                    r.higher_is_better,
                    r.version_hash,
                    # a head-to-head result counts only against the champion it was judged against
                    opponent=r.opponent.version
                    if r.opponent is not None and r.opponent.model_name == m.name
                    else None,
                )
                for r in results
            }
            decision = self._decide(s, m, v, candidate, champion)
            if not decision.promote:
                return self._reject(s, m, v, decision, champion, actor=actor, causation=causation)
            if self.policy.mode == "auto":
                self.promotion.make_champion(
                    s,
                    m,
                    v,
                    actor=actor,
                    action="promote",
                    reason=decision.reason,
                    causation=causation,
                    event_id=f"promoted:{m.name}:{v.version}",
                    decision=decision.as_dict(),
                )
                return EvaluationOutcome(outcome="promoted", reason=decision.reason)
            return self._await_approval(s, m, v, decision, champion, actor=actor, causation=causation)

        return self.store.retrying(work)

    def _decide(
        self,
        s: Session,
        m: RegisteredModel,
        v: ModelVersion,
        candidate: dict[str, Result],
        champion: ModelVersion | None,
    ) -> Decision:
        """The policy's decision: against the champion, or for a quantised version against its parent
        (and against the champion as well when that is another version)."""
        champion_label = f"champion {m.name}:{champion.version}" if champion else None

        def against_champion() -> Decision:
            return decide(
                self.policy,
                candidate,
                {e.task: _result(e) for e in champion.evaluations} if champion else None,
                champion_label,
                champion_version=champion.version if champion else None,
            )

        if v.quantization is None or v.parent_model is None or not self.policy.quantized.enabled:
            return against_champion()
        parent = self._parent(s, v)
        against_parent = decide_against_parent(
            self.policy,
            candidate,
            {e.task: _result(e) for e in parent.evaluations} if parent else None,
            f"parent {v.parent_model}:{v.parent_version}",
        )
        if champion is None or (parent is not None and champion.id == parent.id):
            return against_parent
        return combine(against_parent, against_champion(), champion_label or "champion")

    def _parent(self, s: Session, v: ModelVersion) -> ModelVersion | None:
        assert v.parent_model is not None and v.parent_version is not None
        try:
            return self.store.version(s, self.store.model(s, v.parent_model), v.parent_version)
        except NotFound:  # a base from elsewhere: nothing here to compare with
            return None

    def _store_results(
        self, s: Session, v: ModelVersion, results: list[TaskResult], details_uri: str | None
    ) -> None:
        """One row per task: a re-evaluation replaces the task's earlier numbers."""
        existing = {e.task: e for e in v.evaluations}
        for r in results:
            row = existing.get(r.task) or Evaluation(version_id=v.id, task=r.task)
            row.metrics, row.primary_metric, row.higher_is_better = (
                dict(r.metrics),
                r.primary_metric,
                r.higher_is_better,
            )
            row.version_hash, row.num_samples, row.details_uri = r.version_hash, r.num_samples, details_uri
            row.created_at = utcnow()
            s.add(row)
        s.flush()
        s.refresh(v)

    def _await_approval(
        self,
        s: Session,
        m: RegisteredModel,
        v: ModelVersion,
        decision: Decision,
        champion: ModelVersion | None,
        *,
        actor: str,
        causation: EventEnvelope | None,
    ) -> EvaluationOutcome:
        """Manual mode: the gates passed; a person promotes through the API."""
        self.store.audit(
            s,
            actor,
            "evaluate",
            m.name,
            v.version,
            f"manual mode, awaiting promotion: {decision.reason}",
            decision=decision.as_dict(),
        )
        approval = ModelApprovalRequested(
            model=ModelRef(model_name=m.name, version=v.version),
            champion=ModelRef(model_name=m.name, version=champion.version) if champion else None,
            reason=decision.reason,
        )
        self.outbox.add(s, approval, f"approval:{m.name}:{v.version}", causation)
        # `NAME@candidate` is what awaits approval (`puyu models show demo@candidate`)
        self.promotion.move_alias(
            s,
            m,
            CANDIDATE,
            v,
            actor=actor,
            reason=f"passed the gates, awaiting approval: {decision.reason}",
            causation=causation,
        )
        return EvaluationOutcome(outcome="pending", reason=decision.reason)

    def _reject(
        self,
        s: Session,
        m: RegisteredModel,
        v: ModelVersion,
        decision: Decision,
        champion: ModelVersion | None,
        *,
        actor: str,
        causation: EventEnvelope | None,
    ) -> EvaluationOutcome:
        v.status = VersionStatus.REJECTED
        self.store.audit(
            s,
            actor,
            "reject",
            m.name,
            v.version,
            decision.reason,
            decision=decision.as_dict(),
            champion=champion.version if champion else None,
        )
        payload = ModelRejected(
            model=ModelRef(model_name=m.name, version=v.version),
            reason=decision.reason,
            champion=ModelRef(model_name=m.name, version=champion.version) if champion else None,
        )
        self.outbox.add(s, payload, f"rejected:{m.name}:{v.version}", causation)
        return EvaluationOutcome(outcome="rejected", reason=decision.reason)

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
    ) -> DeploymentOutcome | None:
        """Record a deployment's outcome; a champion that failed is rolled back. None: already processed."""
        check_version(model.version, "model version")

        def work(s: Session) -> DeploymentOutcome | None:
            if self.store.already(s, event_id):
                return None
            m = self.store.model(s, model.model_name)
            v = self.store.version(s, m, model.version)
            state = "ready" if ok else "failed"
            s.add(
                Deployment(
                    version_id=v.id,
                    instance=instance,
                    served_name=served_name,
                    state=state,
                    error=error,
                    time=utcnow(),
                )
            )
            if ok:
                reason = f"ready on {instance} as {served_name}"
                self.store.audit(s, actor, "deployed", m.name, v.version, reason, instance=instance)
                return DeploymentOutcome(outcome="recorded")
            self.store.audit(s, actor, "deployment_failed", m.name, v.version, error or "", instance=instance)
            a = self.store.alias(s, m, CHAMPION)
            if a is None or a.version_id != v.id:
                return DeploymentOutcome(outcome="recorded", note="not the champion; alias unchanged")
            return self.promotion.roll_back_failed_deployment(
                s,
                m,
                v,
                actor=actor,
                reason=f"deployment of version {v.version} failed on {instance}: {error}",
                causation=causation,
            )

        return self.store.retrying(work)
