"""The model registry's core: plain Python over SQLAlchemy, no bus, gRPC or HTTP.

``registry.Registry`` is the facade; the parts behind it are ``store`` (database access),
``versions`` (registration, reads, tags), ``promotion`` (champion, aliases, rollback), ``policy``
(the gates), ``evaluations`` (results and deployments coming back), ``outbox`` (events committed
with their change) and ``card`` (the model card); ``schema`` holds the tables and ``database`` the
engines and migrations. Callers get frozen views (``views``), never rows.

This package namespace re-exports only what needs no SQLAlchemy (views, refusals, the policy, the
card), so the REST client (``puyu models``) reads the API's answers through the same views with
the base install; the facade is imported from ``core.registry``.
"""

from services.model_registry.core.card import model_card
from services.model_registry.core.errors import InvalidInput, NotFound, RegistryRefusal
from services.model_registry.core.policy import Gate, PromotionPolicy
from services.model_registry.core.views import (
    CANDIDATE,
    CHAMPION,
    AuditView,
    DeploymentOutcome,
    DeploymentView,
    EvaluationOutcome,
    EvaluationView,
    ModelView,
    RollbackView,
    TagsView,
    VersionStatus,
    VersionView,
)

__all__ = [
    "CANDIDATE",
    "CHAMPION",
    "AuditView",
    "DeploymentOutcome",
    "DeploymentView",
    "EvaluationOutcome",
    "EvaluationView",
    "Gate",
    "InvalidInput",
    "ModelView",
    "NotFound",
    "PromotionPolicy",
    "RegistryRefusal",
    "RollbackView",
    "TagsView",
    "VersionStatus",
    "VersionView",
    "model_card",
]
