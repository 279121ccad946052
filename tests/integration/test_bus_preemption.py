"""A deterministic event id can be claimed only by the service that owns the fact.

JetStream's duplicate window is stream-wide and trusts the ``Nats-Msg-Id`` a publisher sends; the
consumers' idempotency records are keyed per consumer. Here a credentialed service publishes, on a
subject it may publish, an event under the id of another service's coming fact, first with that id
as its message id (what the owner's message id was before it was sealed) and then through its own
Bus; the owner's real fact must still reach the real registry and take effect. The server is secured
as the local stack secures it; the registry is the real service with its own identity.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.js.client import JetStreamContext

from contracts.events import (
    ArtifactRef,
    CheckpointReady,
    EvaluationCompleted,
    EventEnvelope,
    EventPayload,
    ModelRef,
    TaskResult,
)
from services.cli.stack import start_secured_nats
from services.model_registry.app import create_service
from services.model_registry.config import RegistrySettings
from shared.bus import Bus
from shared.bus.natsauth import AuthDir
from shared.bus.permissions import ADMIN
from shared.natsserver import NatsServer, free_port

pytestmark = pytest.mark.integration


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[tuple[NatsServer, AuthDir]]:
    server, auth = start_secured_nats(tmp_path / "home", free_port())  # provisions in its own loop
    try:
        yield server, auth
    finally:
        server.stop()


@pytest.fixture
async def chain(
    tmp_path: Path, secured: tuple[NatsServer, AuthDir], monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[dict[str, Any]]:
    server, auth = secured
    # the service's Bus reads its identity from the environment, as a launched service does
    monkeypatch.setenv("PUYU_NATS_NKEY_SEED_FILE", str(auth.seed_file_of("model-registry")))
    settings = RegistrySettings(
        home=tmp_path,
        nats_url=server.url,
        registry_grpc_port=free_port(),
        registry_http_port=free_port(),
        log_json=False,
        registry_outbox_interval=0.2,
        artifact_root="file:///ckpt",
    )
    service = create_service(settings)
    task = asyncio.create_task(service.run())
    buses = {
        role: Bus(server.url, role, identity=auth.identity(role))
        for role in ("trainer", "finetuner", "evaluator")
    }
    admin = await nats.connect(server.url, **auth.identity(ADMIN).connect_options())
    try:
        for bus in buses.values():
            await bus.start()
        js = admin.jetstream()
        facts = await js.pull_subscribe("puyu.events.model.>", stream="PUYU_EVENTS")
        yield {"buses": buses, "auth": auth, "url": server.url, "facts": facts}
    finally:
        await admin.close()
        for bus in buses.values():
            await bus.stop()
        service.stop()
        await asyncio.wait_for(task, 30)


def _ckpt(run: str, sha: int) -> CheckpointReady:
    return CheckpointReady(
        job_id=f"job-{run}",
        run_id=run,
        model_name="demo",
        step=100,
        checkpoint=ArtifactRef(uri=f"file:///ckpt/{run}", sha256=f"{sha:064x}", size_bytes=10),
    )


def _evaluation(version: int) -> EvaluationCompleted:
    result = TaskResult(
        task="perplexity",
        metrics={"perplexity": 40.0},
        primary_metric="perplexity",
        higher_is_better=False,
        version_hash="p",
        num_samples=8,
    )
    return EvaluationCompleted(model=ModelRef(model_name="demo", version=version), results=[result])


async def _forge(url: str, identity: Any, payload: EventPayload, event_id: str) -> None:
    """Publish ``payload`` as a raw JetStream client of ``identity``, with ``event_id`` as both the
    envelope id and the message id (an attacker's free choice, not the Bus's)."""
    nc = await nats.connect(url, **identity.connect_options())
    try:
        envelope = EventEnvelope.wrap(payload, source="trainer", event_id=event_id)
        ack = await nc.jetstream().publish(
            type(payload).subject(), envelope.to_bytes(), headers={"Nats-Msg-Id": event_id}
        )
        assert not ack.duplicate  # the forgery itself is stored: the permissions allow this subject
    finally:
        await nc.close()


async def _facts(
    sub: JetStreamContext.PullSubscription, wanted: int, timeout: float = 20
) -> list[EventEnvelope]:
    out: list[EventEnvelope] = []
    deadline = asyncio.get_running_loop().time() + timeout
    while len(out) < wanted and asyncio.get_running_loop().time() < deadline:
        with contextlib.suppress(nats.errors.TimeoutError):
            for msg in await sub.fetch(1, timeout=1):
                await msg.ack()
                out.append(EventEnvelope.from_bytes(msg.data))
    return out


async def test_another_service_cannot_take_the_id_of_the_evaluators_fact(chain: dict[str, Any]) -> None:
    buses, auth, facts = chain["buses"], chain["auth"], chain["facts"]
    await buses["trainer"].publish(_ckpt("real", 1), event_id="ckpt:real:100")
    assert [f.id for f in await _facts(facts, 1)] == ["registered:demo:1"]

    # The trainer knows the id the evaluator will give its result for version 1 and claims it first,
    # with checkpoints the registry accepts (so they are registered under that id, too).
    real_id = "eval:demo:1"
    await _forge(chain["url"], auth.identity("trainer"), _ckpt("forged-raw", 2), real_id)
    await buses["trainer"].publish(_ckpt("forged-bus", 3), event_id=real_id)
    registered = await _facts(facts, 2)
    assert sorted(f.id for f in registered) == ["registered:demo:2", "registered:demo:3"]

    # The evaluator's real result is stored, delivered and acted on: version 1 becomes the champion.
    await buses["evaluator"].publish(_evaluation(1), event_id=real_id)
    outcome = await _facts(facts, 1)
    assert [(f.type, f.payload["model"]["version"]) for f in outcome] == [("model.promoted", 1)], (
        "the evaluator's evaluation.completed was dropped: another service pre-empted its id"
    )


async def test_a_co_owner_cannot_take_the_id_of_the_trainers_checkpoint(chain: dict[str, Any]) -> None:
    """The finetuner may publish checkpoint.ready too, but not in the trainer's name."""
    buses, auth, facts = chain["buses"], chain["auth"], chain["facts"]
    real_id = "ckpt:run-1:100"
    await _forge(chain["url"], auth.identity("finetuner"), _ckpt("forged-raw", 2), real_id)
    await buses["finetuner"].publish(_ckpt("forged-bus", 3), event_id=real_id)
    assert len(await _facts(facts, 2)) == 2

    await buses["trainer"].publish(_ckpt("run-1", 1), event_id=real_id)
    registered = await _facts(facts, 1)
    assert [f.payload["artifact"]["sha256"] for f in registered] == [f"{1:064x}"], (
        "the trainer's checkpoint.ready was dropped: the finetuner pre-empted its id"
    )
    # and a re-publish of the real fact (a retry, another replica) is still stored once
    await buses["trainer"].publish(_ckpt("run-1", 1), event_id=real_id)
    assert await _facts(facts, 1, timeout=3) == []
