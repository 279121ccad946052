"""Forged actions on a nats-server secured as the local stack secures it are refused.

The server is the one ``Stack`` starts (users and permissions from shared/bus/permissions.py, streams
provisioned as the admin). Each forged action is tried with every identity that must not do it, and
the test also checks that the owner can, so that a weakened configuration (no users, a wildcard
grant, a wider role) fails it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client
from nats.js.api import StreamConfig

from contracts.events import (
    ArtifactRef,
    CheckpointReady,
    EvaluationCompleted,
    EventEnvelope,
    EventPayload,
    ModelPromoted,
    ModelRef,
    TaskResult,
)
from contracts.events.subjects import DLQ_PREFIX, EVENTS_STREAM, WORKERS_BUCKET
from services.cli.stack import Stack, start_secured_nats
from shared.bus import Bus, HandlerContext
from shared.bus.identity import NatsAuthError, NatsIdentity
from shared.bus.natsauth import AuthDir, User, local_users, new_seed
from shared.bus.permissions import ADMIN, GATEWAY, ROLES, WORKER, worker_durable_name
from shared.natsserver import NatsServer, free_port
from shared.ports import SERVICES
from shared.settings import CommonSettings

pytestmark = pytest.mark.integration

WORKERS = ("worker-a", "worker-b")
USERS = local_users(workers=WORKERS)
ARTIFACT = ArtifactRef(uri="file:///tmp/forged", sha256="0" * 64, size_bytes=1)
MODEL = ModelRef(model_name="m", version=1)


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[tuple[NatsServer, AuthDir]]:
    server, auth = start_secured_nats(tmp_path / "home", free_port(), workers=WORKERS)
    try:
        yield server, auth
    finally:
        server.stop()


class Session:
    """One identity's connection, with the server's refusals it received."""

    def __init__(self, nc: Client, errors: list[str]) -> None:
        self.nc, self.errors = nc, errors

    async def refused(self, subject: str, data: bytes = b"{}", headers: dict[str, str] | None = None) -> bool:
        before = len(self.errors)
        await self.nc.publish(subject, data, headers=headers)
        await self.nc.flush()  # the server answers the publish (a refusal) before the flush's pong
        await asyncio.sleep(0.05)
        return any("permissions violation" in e for e in self.errors[before:])


async def _connect(url: str, identity: NatsIdentity) -> Session:
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc).lower())

    nc = await nats.connect(
        url, error_cb=on_error, allow_reconnect=False, connect_timeout=3, **identity.connect_options()
    )
    return Session(nc, errors)


@pytest.fixture
async def sessions(secured: tuple[NatsServer, AuthDir]) -> AsyncIterator[dict[str, Session]]:
    server, auth = secured
    opened = {u.name: await _connect(server.url, auth.identity(u.role, u.instance)) for u in USERS}
    yield opened
    for session in opened.values():
        await session.nc.close()


def _envelope(payload: EventPayload, event_id: str) -> bytes:
    return EventEnvelope.wrap(payload, source="forger", event_id=event_id).to_bytes()


async def _stored(admin: Client, subject: str) -> int:
    info = await admin.jetstream().stream_info(EVENTS_STREAM, subjects_filter=subject)
    return sum((info.state.subjects or {}).values())


async def _check_publishers(
    sessions: dict[str, Session], admin: Client, payload: EventPayload, owners: set[str]
) -> None:
    subject = type(payload).subject()
    for name, session in sessions.items():
        event_id = f"{subject}:by:{name}"
        refused = await session.refused(subject, _envelope(payload, event_id), {"Nats-Msg-Id": event_id})
        role = name.split("@")[0]
        if role in owners or role == ADMIN:
            assert not refused, f"{name} may publish {subject}"
        else:
            assert refused, f"{name} published {subject}: the forged event was not refused"
    # the owners' (and the admin's) copies reached the stream, and nothing else
    expected, stored = len(owners) + 1, 0
    for _ in range(50):
        if (stored := await _stored(admin, subject)) >= expected:
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.2)
    assert stored == expected == await _stored(admin, subject)


async def test_a_connection_without_credentials_or_with_an_unknown_key_is_refused(
    secured: tuple[NatsServer, AuthDir], tmp_path: Path
) -> None:
    server, _ = secured
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(server.url, allow_reconnect=False, connect_timeout=3)
    with pytest.raises(NatsAuthError, match="requires credentials"):
        await Bus(server.url, "anonymous", identity=NatsIdentity()).start()
    stranger = tmp_path / "stranger.nk"
    stranger.write_bytes(new_seed())
    with pytest.raises(NatsAuthError, match="refused the identity"):
        await Bus(server.url, "stranger", identity=NatsIdentity(nkey_seed_file=stranger)).start()


async def test_forged_chain_events_are_refused(
    sessions: dict[str, Session], secured: tuple[NatsServer, AuthDir]
) -> None:
    admin = sessions[ADMIN].nc
    checkpoint = CheckpointReady(job_id="j", run_id="r", model_name="m", step=1, checkpoint=ARTIFACT)
    await _check_publishers(sessions, admin, checkpoint, owners={"trainer", "finetuner"})
    results = [
        TaskResult(task="t", metrics={"acc": 1.0}, primary_metric="acc", version_hash="h", num_samples=1)
    ]
    evaluation = EvaluationCompleted(model=MODEL, results=results)
    await _check_publishers(sessions, admin, evaluation, owners={"evaluator"})
    promoted = ModelPromoted(model=MODEL, artifact=ARTIFACT, reason="forged")
    await _check_publishers(sessions, admin, promoted, owners={"model-registry"})


async def test_only_a_worker_writes_its_own_announcement(sessions: dict[str, Session]) -> None:
    admin = sessions[ADMIN].nc
    for name, session in sessions.items():
        user = next(u for u in USERS if u.name == name)
        for key in (*WORKERS, "gateway-0", "attacker"):
            own = user.instance == key and user.role in (WORKER, GATEWAY)
            refused = await session.refused(f"$KV.{WORKERS_BUCKET}.{key}", json.dumps({"by": name}).encode())
            assert refused != (own or user.role == ADMIN), f"{name} writing {key}: refused={refused}"
    kv = await admin.jetstream().key_value(WORKERS_BUCKET)
    for key in (*WORKERS, "gateway-0"):
        entry = await kv.get(key)
        assert json.loads(entry.value or b"{}")["by"] in {
            next(u.name for u in USERS if u.instance == key),
            ADMIN,
        }


async def test_services_cannot_take_another_consumer_or_change_a_stream(sessions: dict[str, Session]) -> None:
    evaluator = sessions["evaluator"]
    # pull from (and so steal) the registry's checkpoint consumer; read every event directly
    assert await evaluator.refused("$JS.API.CONSUMER.MSG.NEXT.PUYU_EVENTS.model-registry--checkpoint_ready")
    assert await evaluator.refused("$JS.API.CONSUMER.CREATE.PUYU_EVENTS.mine.puyu.events.checkpoint.ready")
    await evaluator.nc.subscribe("puyu.events.>")
    await evaluator.nc.flush()
    await asyncio.sleep(0.05)
    assert any("permissions violation for subscription" in e for e in evaluator.errors), evaluator.errors
    # a stream update could source forged events from elsewhere: only the admin may
    config = StreamConfig(name=EVENTS_STREAM, subjects=["puyu.events.>", "forged.>"]).as_dict()
    for name in ("trainer", "model-registry", "operator", f"{WORKER}@worker-a"):
        assert await sessions[name].refused(
            f"$JS.API.STREAM.UPDATE.{EVENTS_STREAM}", json.dumps(config).encode()
        )
        assert await sessions[name].refused(f"$JS.API.STREAM.DELETE.{EVENTS_STREAM}")


async def test_each_identity_runs_its_bus_and_consumers(
    secured: tuple[NatsServer, AuthDir], sessions: dict[str, Session]
) -> None:
    """The permissions are enough for all a Bus does: streams, buckets, the job board, its own
    consumers (created, pulled, acked) and the dead letter with its job.failed event."""
    server, auth = secured
    buses: list[Bus] = []
    expected: set[tuple[str, str]] = set()
    for user in USERS:
        role = ROLES.get(user.role)
        bus = Bus(server.url, user.role, identity=auth.identity(user.role, user.instance))
        for cls in role.consumes if role else ():
            durable = (
                worker_durable_name(user.instance or "", cls)
                if role and role.per_instance_consumers
                else None
            )
            bus.handle(cls, durable=durable, max_deliver=1)(_never_called)
            expected.add((user.role, cls.subject()))
        await asyncio.wait_for(bus.start(), 20)
        await bus.jobs.get("nothing")
        buses.append(bus)
    try:
        admin = sessions[ADMIN].nc
        for subject in {subject for _, subject in expected}:
            await admin.jetstream().publish(subject, b"not an envelope")  # every consumer dead-letters it
        dead = await admin.jetstream().pull_subscribe(f"{DLQ_PREFIX}.>", stream="PUYU_DLQ")
        seen: set[tuple[str, str]] = set()
        deadline = asyncio.get_running_loop().time() + 30
        while not expected <= seen and asyncio.get_running_loop().time() < deadline:
            with contextlib.suppress(nats.errors.TimeoutError):
                for msg in await dead.fetch(50, timeout=1):
                    seen.add(
                        ((msg.headers or {})["Puyu-Service"], msg.subject.removeprefix(f"{DLQ_PREFIX}."))
                    )
                    await msg.ack()
        assert expected <= seen, f"not dead-lettered by their consumers: {sorted(expected - seen)}"
    finally:
        for bus in buses:
            await bus.stop()


async def _never_called(ctx: HandlerContext[Any]) -> None:
    raise AssertionError("a malformed message reached a handler")


def test_users_are_what_the_stack_makes() -> None:
    assert User(WORKER, "worker-a") in USERS and User(GATEWAY, "gateway-0") in USERS


def test_a_stack_with_its_own_nats_gives_each_service_its_identity(tmp_path: Path) -> None:
    settings = CommonSettings(home=tmp_path / "home", nats_url=f"nats://127.0.0.1:{free_port()}")
    stack = Stack(settings, services=(), restart=False, own_nats=True)
    stack.start()
    try:
        for service in SERVICES:
            seed = Path(stack.env(service)["PUYU_NATS_NKEY_SEED_FILE"])
            assert seed.parent == tmp_path / "home" / "nats-auth" and seed.is_file()
        assert stack.env("inference_gateway")["PUYU_NATS_NKEY_SEED_FILE"].endswith(
            "inference-gateway@gateway-0.nk"
        )
        assert len({stack.env(s)["PUYU_NATS_NKEY_SEED_FILE"] for s in SERVICES}) == len(SERVICES)

        async def anonymous() -> None:
            await nats.connect(stack.settings.nats_url, allow_reconnect=False, connect_timeout=3)

        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            asyncio.run(anonymous())
    finally:
        stack.stop()
