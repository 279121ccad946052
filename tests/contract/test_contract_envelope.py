"""Every registered event type round-trips through the envelope; bad input raises InvalidEvent naming the field."""

from __future__ import annotations

import json

import pytest

from contracts.events import (
    EVENT_TYPES,
    ArtifactRef,
    EventEnvelope,
    EventPayload,
    InvalidEvent,
    ModelRef,
    ModelRegistered,
)


def test_samples_cover_every_registered_type(samples: list[EventPayload]) -> None:
    # every type at least once (a type may have variants, e.g. a pretrained and a quantised checkpoint)
    assert {s.event_type for s in samples} == set(EVENT_TYPES)


def test_every_type_round_trips(samples: list[EventPayload]) -> None:
    for payload in samples:
        env = EventEnvelope.wrap(payload, source="test", event_id=f"id:{payload.event_type}")
        back = EventEnvelope.from_bytes(env.to_bytes())
        assert back == env
        parsed = back.parsed()
        assert type(parsed) is type(payload)
        assert parsed == payload, payload.event_type
        assert back.payload_as(type(payload)) == payload
        assert back.type == payload.event_type and back.schema_version == payload.schema_version


def test_causation_carries_correlation(samples: list[EventPayload]) -> None:
    first = EventEnvelope.wrap(samples[0], source="a", correlation_id="corr-1")
    second = EventEnvelope.wrap(samples[1], source="b", causation=first, event_id="x:1")
    again = EventEnvelope.from_bytes(second.to_bytes())
    assert (again.correlation_id, again.causation_id, again.id) == ("corr-1", first.id, "x:1")


def _valid_envelope() -> dict:
    payload = ModelRegistered(
        model=ModelRef(model_name="m", version=1),
        artifact=ArtifactRef(uri="file:///a", sha256="0" * 64, size_bytes=1),
        run_id="r",
    )
    return json.loads(EventEnvelope.wrap(payload, source="test").to_bytes())


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda e: e.pop("id"), "id"),
        (lambda e: e.pop("correlation_id"), "correlation_id"),
        (lambda e: e.update(schema_version="one"), "schema_version"),
        (lambda e: e.update(time="yesterday"), "time"),
        (lambda e: e.update(payload=[1, 2]), "payload"),
        (lambda e: e.update(surprise=1), "surprise"),
    ],
)
def test_malformed_envelope_names_the_field(mutate, needle: str) -> None:
    env = _valid_envelope()
    mutate(env)
    with pytest.raises(InvalidEvent, match="malformed event envelope") as info:
        EventEnvelope.from_bytes(json.dumps(env).encode())
    assert needle in str(info.value)


@pytest.mark.parametrize("data", [b"", b"not json", b"[]", b'{"id": 1'])
def test_garbage_is_an_invalid_event(data: bytes) -> None:
    with pytest.raises(InvalidEvent, match="malformed event envelope"):
        EventEnvelope.from_bytes(data)


@pytest.mark.parametrize(
    ("mutate", "needles"),
    [
        (lambda p: p.pop("run_id"), ["model.registered", "run_id", "Field required"]),
        (lambda p: p["model"].update(version=0), ["model.version"]),
        (lambda p: p["artifact"].pop("sha256"), ["artifact.sha256"]),
        (lambda p: p.update(extra_field=True), ["extra_field"]),
        (lambda p: p.update(tasks="perplexity"), ["tasks"]),
    ],
)
def test_malformed_payload_names_the_field(mutate, needles: list[str]) -> None:
    env = _valid_envelope()
    mutate(env["payload"])
    envelope = EventEnvelope.from_bytes(json.dumps(env).encode())  # the envelope itself is fine
    with pytest.raises(InvalidEvent, match="invalid payload") as info:
        envelope.parsed()
    for needle in needles:
        assert needle in str(info.value)


def test_unknown_type_and_version_are_invalid() -> None:
    env = _valid_envelope()
    with pytest.raises(InvalidEvent, match=r"unknown event type 'model\.exploded'"):
        EventEnvelope.from_bytes(json.dumps({**env, "type": "model.exploded"}).encode()).parsed()
    with pytest.raises(InvalidEvent, match="schema version 99"):
        EventEnvelope.from_bytes(json.dumps({**env, "schema_version": 99}).encode()).parsed()


def test_payload_as_rejects_another_type(samples: list[EventPayload]) -> None:
    env = EventEnvelope.wrap(samples[0], source="test")
    with pytest.raises(InvalidEvent, match=r"expected a model\.registered event"):
        env.payload_as(ModelRegistered)
