"""The exported JSON Schemas and AsyncAPI document describe the messages actually on the wire."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from contracts.events import EVENT_TYPES, EventEnvelope, EventPayload
from contracts.events.subjects import EVENTS_STREAM, JOBS_STREAM

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "contracts" / "schemas"


def _schema_for(cls: type[EventPayload]) -> dict[str, Any]:
    return json.loads((SCHEMAS / "events" / f"{cls.event_type}.v{cls.schema_version}.json").read_text())


def test_one_schema_file_per_type() -> None:
    names = sorted(p.name for p in (SCHEMAS / "events").glob("*.json"))
    assert names == sorted(f"{c.event_type}.v{c.schema_version}.json" for c in EVENT_TYPES.values())


def test_wire_messages_validate_against_their_schema(samples: list[EventPayload]) -> None:
    for payload in samples:
        schema = _schema_for(type(payload))
        jsonschema.Draft202012Validator.check_schema(schema)
        wire = json.loads(EventEnvelope.wrap(payload, source="test").to_bytes())
        jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker()).validate(wire)


def test_schemas_reject_what_the_models_reject(samples: list[EventPayload]) -> None:
    payload = next(p for p in samples if p.event_type == "checkpoint.ready")
    validator = jsonschema.Draft202012Validator(_schema_for(type(payload)))
    wire = json.loads(EventEnvelope.wrap(payload, source="test").to_bytes())
    for broken in (
        {**wire, "type": "model.registered"},
        {**wire, "payload": {**wire["payload"], "step": -1}},
        {**wire, "payload": {k: v for k, v in wire["payload"].items() if k != "checkpoint"}},
        {**wire, "payload": {**wire["payload"], "unexpected": 1}},
        {k: v for k, v in wire.items() if k != "correlation_id"},
    ):
        assert not validator.is_valid(broken), broken


def _resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), f"external ref {ref}"
    node: Any = doc
    for part in ref[2:].split("/"):
        assert part in node, f"dangling $ref {ref}"
        node = node[part]
    return node


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


@pytest.fixture(scope="module")
def asyncapi() -> dict[str, Any]:
    return yaml.safe_load((SCHEMAS / "asyncapi.yaml").read_text())


def test_asyncapi_refs_resolve(asyncapi: dict[str, Any]) -> None:
    assert asyncapi["asyncapi"] == "3.0.0"
    refs = _refs(asyncapi)
    assert len(refs) > 3 * len(EVENT_TYPES)
    for ref in refs:
        _resolve(asyncapi, ref)


def test_asyncapi_channels_and_operations(asyncapi: dict[str, Any]) -> None:
    addresses = {c["address"]: c for c in asyncapi["channels"].values()}
    for cls in EVENT_TYPES.values():
        channel = addresses[cls.subject()]
        assert channel["x-puyu-stream"] == (JOBS_STREAM if cls.kind == "job" else EVENTS_STREAM)
        ops = [
            o for o in asyncapi["operations"].values() if _resolve(asyncapi, o["channel"]["$ref"]) is channel
        ]
        assert sorted(o["action"] for o in ops) == ["receive", "send"], cls.event_type
        receive = next(o for o in ops if o["action"] == "receive")
        assert receive["x-puyu-delivery"] == ("work-queue" if cls.kind == "job" else "fan-out")
        assert receive["tags"] == [{"name": "job" if cls.kind == "job" else "fact"}]


def test_asyncapi_message_schemas_validate_wire(
    asyncapi: dict[str, Any], samples: list[EventPayload]
) -> None:
    # Validate against the AsyncAPI copy too: the components must be usable, not only present.
    components = asyncapi["components"]
    for payload in samples:
        channel = next(c for c in asyncapi["channels"].values() if c["address"] == payload.subject())
        (message_ref,) = channel["messages"].values()
        message = _resolve(asyncapi, message_ref["$ref"])
        schema = {**_resolve(asyncapi, message["payload"]["$ref"]), "components": components}
        wire = json.loads(EventEnvelope.wrap(payload, source="test").to_bytes())
        jsonschema.Draft202012Validator(schema).validate(wire)
        assert not jsonschema.Draft202012Validator(schema).is_valid({**wire, "type": "other"})
