"""The bus's permission table (shared/bus/permissions.py) against the contracts and the services' code:
every event type has a publisher, each service's handlers consume exactly what its role says, the
chain's trusted facts have the publishers they must have, and nats-server accepts the rendered
authorization."""

from __future__ import annotations

import importlib
import subprocess
import typing
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from contracts.events import (
    EVENT_TYPES,
    CheckpointReady,
    EvaluationCompleted,
    EventPayload,
    ModelPromoted,
)
from contracts.events.subjects import DLQ_PREFIX, EVENTS_PREFIX, JOBS_PREFIX
from shared.bus import Bus
from shared.bus.identity import NatsIdentity
from shared.bus.natsauth import AuthDir, deployment_users, local_users
from shared.bus.permissions import (
    OPERATOR,
    ROLES,
    WORKER,
    durable_name,
    permissions,
    publishers_of,
    role_for_service,
    worker_durable_name,
)
from shared.natsserver import find_binary
from shared.ports import SERVICES

KEY = "UAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"


def test_every_event_type_has_a_publisher() -> None:
    orphans = [t for t, cls in EVENT_TYPES.items() if not publishers_of(cls)]
    assert not orphans, f"no role publishes {orphans}: add them to shared/bus/permissions.py"
    for role in ROLES.values():
        for cls in (*role.publishes, *role.consumes):
            assert EVENT_TYPES.get(cls.event_type) is cls, f"{role.name}: {cls} is not a registered event"


def test_the_chains_facts_have_only_their_owners_as_publishers() -> None:
    assert sorted(publishers_of(CheckpointReady)) == ["finetuner", "trainer"]
    assert publishers_of(EvaluationCompleted) == ["evaluator"]
    for cls in EVENT_TYPES.values():
        if cls.event_type.startswith("model."):
            assert publishers_of(cls) == ["model-registry"], cls.event_type
    assert publishers_of(ModelPromoted) == ["model-registry"]
    # a job is requested by the operator or by the service that runs that kind of job (gRPC Jobs)
    for cls in EVENT_TYPES.values():
        if cls.kind == "job":
            consumers = [r.name for r in ROLES.values() if cls in r.consumes]
            assert set(publishers_of(cls)) <= {OPERATOR, *consumers, "dedup", "evaluator", "trainer"}


def _subjects(perms: dict[str, Any]) -> list[str]:
    return [s for s in perms["publish"]["allow"] if s.startswith(("puyu.", "$KV."))]


@pytest.mark.parametrize("role", sorted(ROLES))
def test_a_role_may_publish_its_events_and_dead_letters_only(role: str) -> None:
    spec = ROLES[role]
    perms = permissions(role, KEY, "worker-a" if spec.announces else None)
    allowed_events = {s for s in _subjects(perms) if s.startswith((EVENTS_PREFIX, JOBS_PREFIX))}
    assert allowed_events == {c.subject() for c in spec.publishes}
    dead_letters = {s for s in _subjects(perms) if s.startswith(DLQ_PREFIX)}
    assert dead_letters == {f"{DLQ_PREFIX}.{c.subject()}" for c in spec.consumes}
    for subject in perms["publish"]["allow"]:
        assert subject == ">" or not subject.startswith((">", "*", "puyu.>", "$JS.API.>")), subject
        assert "STREAM.UPDATE" not in subject and "STREAM.DELETE" not in subject
        assert "STREAM.PURGE" not in subject
    assert perms["subscribe"]["allow"][0] == f"_INBOX_{KEY}.>"
    watches = [s for s in perms["subscribe"]["allow"] if not s.startswith("_INBOX_")]
    assert watches == ([f"{EVENTS_PREFIX}.>"] if spec.watches_events else [])


def test_only_announcing_roles_write_their_own_worker_entry() -> None:
    for role, spec in ROLES.items():
        writes = [
            s for s in _subjects(permissions(role, KEY, "worker-a")) if s.startswith("$KV.puyu_workers")
        ]
        assert writes == (["$KV.puyu_workers.worker-a"] if spec.announces else []), role
    # a worker identity shared by replicas (compose --scale) may write any entry but no other role's consumer
    shared = permissions(WORKER, KEY)
    assert "$KV.puyu_workers.*" in shared["publish"]["allow"]
    assert (
        f"$JS.API.CONSUMER.MSG.NEXT.PUYU_EVENTS.{durable_name('model-registry', CheckpointReady)}"
        in (shared["publish"]["deny"])
    )


def _register(role: str, pkg: str, instance: str) -> list[tuple[str, str]]:
    handlers = importlib.import_module(f"services.{pkg}.handlers")
    settings_cls = typing.get_type_hints(handlers.register_handlers)["settings"]
    env = {"gateway_role": "worker", "gateway_instance": instance} if role == WORKER else {}
    settings = settings_cls(**env)
    bus = Bus("nats://127.0.0.1:1", role, identity=NatsIdentity())
    core = SimpleNamespace(pool=object(), instance=instance)  # what the gateway's adapter reads at wiring
    handlers.register_handlers(bus, core, settings)
    return [(config.filter_subject or "", config.durable_name or "") for _, config in bus.consumers]


@pytest.mark.parametrize("pkg", [*SERVICES, "inference_worker"])
def test_each_services_handlers_consume_what_its_role_says(pkg: str) -> None:
    role = role_for_service(pkg)
    instance = "worker-a"
    registered = _register(role, "inference_gateway" if pkg == "inference_worker" else pkg, instance)
    spec = ROLES[role]

    def durable(cls: type[EventPayload]) -> str:
        return worker_durable_name(instance, cls) if spec.per_instance_consumers else durable_name(role, cls)

    assert sorted(registered) == sorted((c.subject(), durable(c)) for c in spec.consumes)


def test_nats_server_accepts_the_rendered_authorization(tmp_path: Path) -> None:
    local = AuthDir(tmp_path / "local").ensure(local_users(workers=("worker-a", "worker-b")))
    deployed = AuthDir(tmp_path / "deployed").ensure(deployment_users())
    for config in (local, deployed):
        out = subprocess.run(
            [find_binary(), "-t", "-c", str(config)], capture_output=True, text=True, timeout=30
        )
        assert out.returncode == 0, out.stdout + out.stderr
    assert (tmp_path / "local" / "operator.nk").stat().st_mode & 0o077 == 0, "seeds must be private"
