"""What the core returns: frozen, typed views of the registry's state (never ORM rows or loose dicts).

They are pydantic models so the REST adapter serialises them as they are: the JSON keeps the field
names and string values the registry has always answered with (times as ISO 8601 strings).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, PlainSerializer

from contracts.events import ArtifactRef, ModelRef

CHAMPION = "champion"  # the alias the serving fleet follows
CANDIDATE = "candidate"  # manual mode: the version that passed the gates and awaits approval


class VersionStatus(StrEnum):
    """Stored and answered as its string value."""

    CANDIDATE = "candidate"
    CHAMPION = "champion"
    REJECTED = "rejected"
    ARCHIVED = "archived"


IsoTime = Annotated[datetime, PlainSerializer(lambda t: t.isoformat(), return_type=str, when_used="json")]


class View(BaseModel):
    model_config = ConfigDict(frozen=True, protected_namespaces=())


class EvaluationView(View):
    task: str
    metrics: dict[str, float]
    primary_metric: str
    higher_is_better: bool
    version_hash: str
    num_samples: int
    details_uri: str | None


class DeploymentView(View):
    instance: str
    state: str  # ready | failed
    served_name: str | None
    error: str | None
    time: IsoTime


class VersionView(View):
    model_name: str
    version: int
    artifact: ArtifactRef
    format: str
    run_id: str
    kind: str
    method: str
    parent: ModelRef | None
    adapter: dict[str, Any] | None
    datasets: list[Any]  # lineage as given (DatasetRef dumps from the trainers)
    hyperparameters: dict[str, Any]
    train_metrics: dict[str, float]
    quantization: (
        dict[str, Any] | None
    )  # a quantised version: method, bits, group size ... (parent: ``parent``)
    tags: dict[str, str]
    status: VersionStatus
    aliases: tuple[str, ...]
    created_at: IsoTime
    evaluations: tuple[EvaluationView, ...]
    deployments: tuple[DeploymentView, ...]


class ModelView(View):
    model_name: str
    latest_version: int
    champion_version: int  # 0: no champion
    aliases: dict[str, int]
    description: str
    tags: dict[str, str]
    created_at: IsoTime


class AuditView(View):
    id: int
    time: IsoTime
    actor: str
    action: str
    model: str
    version: int | None
    reason: str
    details: dict[str, Any]


class TagsView(View):
    tags: dict[str, str]
    description: str


class EvaluationOutcome(View):
    outcome: Literal["promoted", "rejected", "pending", "recorded"]
    reason: str


class RollbackView(View):
    """A champion moved back: ``restored`` is the champion again, ``rolled_back`` is now rejected."""

    restored: int
    rolled_back: int
    event_id: str
    reason: str


class DeploymentOutcome(View):
    """A deployment recorded; a failed champion is rolled back (``restored`` None: nothing to restore)."""

    outcome: Literal["recorded", "rolled_back"]
    note: str = ""
    restored: int | None = None
    rolled_back: int | None = None
    event_id: str | None = None
    reason: str = ""
