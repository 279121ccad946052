"""Export the event contracts as JSON Schema and AsyncAPI 3.0 (``make schemas``; a test checks for drift).

``python -m contracts.export_schemas [OUT]`` writes, under OUT (default ``contracts/schemas``):

- ``events/<type>.v<schema_version>.json``: one self-contained JSON Schema (draft 2020-12) per event
  type, the envelope with its ``payload`` narrowed to that type's pydantic model;
- ``asyncapi.yaml``: channels (the NATS subjects), messages, and the operations telling work items
  (jobs, shared by the replicas of one service) from fan-out facts.

The output is deterministic (sorted keys, no timestamps) so that it can be committed and diffed.
"""

from __future__ import annotations

import json
import sys
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml
from pydantic.json_schema import models_json_schema

from contracts.events import EVENT_TYPES, EventEnvelope, EventPayload
from contracts.events.subjects import (
    DLQ_PREFIX,
    DLQ_STREAM,
    EVENTS_STREAM,
    JOBS_STREAM,
    stream_for,
)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "contracts" / "schemas"
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

# Headers every publisher sets (shared.bus): the id drives JetStream's duplicate window.
MESSAGE_HEADERS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "Nats-Msg-Id": {
            "type": "string",
            "description": "The event id sealed by its publisher ({id}~{HMAC tag}, shared.bus.identity): "
            "JetStream drops re-publishes of it, and no other publisher can claim it first.",
        },
        "Puyu-Type": {
            "type": "string",
            "description": "The event type, for routing without parsing the body.",
        },
    },
    "required": ["Nats-Msg-Id", "Puyu-Type"],
}
DLQ_HEADERS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "Nats-Msg-Id": {"type": "string"},
        "Puyu-Error": {"type": "string", "description": "Why the handler gave up (truncated)."},
        "Puyu-Service": {"type": "string", "description": "The service whose handler failed."},
        "Puyu-Attempts": {"type": "string", "description": "Deliveries attempted, as a decimal string."},
    },
    "required": ["Nats-Msg-Id", "Puyu-Error", "Puyu-Service", "Puyu-Attempts"],
}


def event_types() -> list[type[EventPayload]]:
    return [EVENT_TYPES[name] for name in sorted(EVENT_TYPES)]


def schema_filename(cls: type[EventPayload]) -> str:
    return f"{cls.event_type}.v{cls.schema_version}.json"


def _pascal(event_type: str) -> str:
    return "".join(part.capitalize() for part in event_type.replace("_", ".").split("."))


def _kind_label(cls: type[EventPayload]) -> str:
    return "job" if cls.kind == "job" else "fact"


def _narrowed_envelope(cls: type[EventPayload], envelope: dict[str, Any], payload_ref: str) -> dict[str, Any]:
    """The envelope schema with type/version pinned and ``payload`` pointing at ``payload_ref``."""
    schema = json.loads(json.dumps(envelope))  # deep copy
    props = schema["properties"]
    props["type"] = {"const": cls.event_type, "title": "Type", "type": "string"}
    props["schema_version"] = {"const": cls.schema_version, "title": "Schema Version", "type": "integer"}
    props["payload"] = {"$ref": payload_ref}
    schema["title"] = f"{cls.__name__} event"
    schema["description"] = (
        f"Envelope of a {cls.event_type} v{cls.schema_version} "
        + ("job request (a work item for one service)" if cls.kind == "job" else "fact (fanned out)")
        + f", published on {cls.subject()}."
    )
    return schema


def event_json_schema(cls: type[EventPayload]) -> dict[str, Any]:
    """A standalone JSON Schema for one event type: envelope + payload, all definitions inlined in $defs."""
    payload = cls.model_json_schema(mode="validation")
    defs: dict[str, Any] = payload.pop("$defs", {})
    if cls.__name__ in defs:
        raise ValueError(f"{cls.__name__}: a nested model shares the payload's name")
    defs[cls.__name__] = payload
    envelope = EventEnvelope.model_json_schema(mode="validation")
    schema = _narrowed_envelope(cls, envelope, f"#/$defs/{cls.__name__}")
    schema["$schema"] = JSON_SCHEMA_DIALECT
    schema["$id"] = f"urn:puyu:event:{cls.event_type}:v{cls.schema_version}"
    schema["$defs"] = defs
    schema["x-puyu-kind"] = _kind_label(cls)
    schema["x-puyu-subject"] = cls.subject()
    schema["x-puyu-stream"] = stream_for(cls)
    return schema


def _project_version() -> str:
    pyproject = ROOT / "pyproject.toml"
    if pyproject.exists():
        return str(tomllib.loads(pyproject.read_text())["project"]["version"])
    return metadata.version("puyu")


def asyncapi_document() -> dict[str, Any]:
    types = event_types()
    ref_template = "#/components/schemas/{model}"
    _, combined = models_json_schema(
        [(cls, "validation") for cls in types] + [(EventEnvelope, "validation")], ref_template=ref_template
    )
    schemas: dict[str, Any] = dict(combined.get("$defs", {}))
    envelope = schemas["EventEnvelope"]
    channels: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for cls in types:
        name = _pascal(cls.event_type)
        job = cls.kind == "job"
        schemas[f"{name}Event"] = _narrowed_envelope(cls, envelope, ref_template.format(model=cls.__name__))
        messages[name] = {
            "name": cls.event_type,
            "title": cls.__name__,
            "summary": f"{cls.event_type} v{cls.schema_version} ({_kind_label(cls)})",
            "contentType": "application/json",
            "headers": MESSAGE_HEADERS,
            "payload": {"$ref": f"#/components/schemas/{name}Event"},
            "tags": [{"name": _kind_label(cls)}],
        }
        channels[name] = {
            "address": cls.subject(),
            "title": cls.event_type,
            "description": (
                f"JetStream stream {JOBS_STREAM} (work-queue retention): each request is handled by exactly one "
                "replica of the service that does this job."
                if job
                else f"JetStream stream {EVENTS_STREAM} (limits retention): every interested service reads it "
                "through its own durable consumer."
            ),
            "messages": {name: {"$ref": f"#/components/messages/{name}"}},
            "x-puyu-stream": stream_for(cls),
        }
        channel_ref = {"$ref": f"#/channels/{name}"}
        message_ref = [{"$ref": f"#/channels/{name}/messages/{name}"}]
        operations[f"publish{name}"] = {
            "action": "send",
            "channel": channel_ref,
            "messages": message_ref,
            "summary": ("Request the job" if job else "Announce the fact")
            + " (Nats-Msg-Id = the event id sealed by its publisher, so a re-publish is dropped).",
            "tags": [{"name": _kind_label(cls)}],
        }
        operations[f"consume{name}"] = {
            "action": "receive",
            "channel": channel_ref,
            "messages": message_ref,
            "summary": (
                "Work item: one durable pull consumer shared by the replicas of the handling service."
                if job
                else "Fan-out: one durable pull consumer per interested service."
            ),
            "description": "Explicit ack; failures are retried with back-off, then dead-lettered with a job.failed.",
            "tags": [{"name": _kind_label(cls)}],
            "x-puyu-delivery": "work-queue" if job else "fan-out",
        }
    channels["DeadLetter"] = {
        "address": f"{DLQ_PREFIX}.{{subject}}",
        "title": "dead letters",
        "description": f"JetStream stream {DLQ_STREAM}: the original message body of a handler that gave up.",
        "parameters": {"subject": {"description": "The subject the failed message came from."}},
        "messages": {"DeadLetter": {"$ref": "#/components/messages/DeadLetter"}},
        "x-puyu-stream": DLQ_STREAM,
    }
    messages["DeadLetter"] = {
        "name": "dead-letter",
        "title": "Dead letter",
        "contentType": "application/json",
        "headers": DLQ_HEADERS,
        "payload": {"description": "The original bytes, usually an EventEnvelope (maybe malformed)."},
    }
    operations["deadLetter"] = {
        "action": "send",
        "channel": {"$ref": "#/channels/DeadLetter"},
        "messages": [{"$ref": "#/channels/DeadLetter/messages/DeadLetter"}],
        "summary": "A consumer parks a message that failed max_deliver times or can never succeed.",
    }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "puyu events",
            "version": _project_version(),
            "description": "The durable events of the puyu chain on NATS JetStream: one envelope, one payload "
            "model per event type. Generated by `python -m contracts.export_schemas`; do not edit.",
            "tags": [
                {
                    "name": "job",
                    "description": "A work item (request) handled by one replica of one service.",
                },
                {
                    "name": "fact",
                    "description": "Something that happened, fanned out to every interested service.",
                },
            ],
        },
        "defaultContentType": "application/json",
        "servers": {
            "local": {
                "host": "127.0.0.1:4222",
                "protocol": "nats",
                "description": "Embedded / dev nats-server.",
            },
            "compose": {"host": "nats:4222", "protocol": "nats", "description": "The compose.yaml stack."},
        },
        "channels": channels,
        "operations": operations,
        "components": {"schemas": schemas, "messages": messages},
    }


def _dump_json(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def render() -> dict[str, str]:
    """Relative path -> file content of everything export() writes."""
    files = {f"events/{schema_filename(cls)}": _dump_json(event_json_schema(cls)) for cls in event_types()}
    header = "# Generated by `python -m contracts.export_schemas`: do not edit.\n"
    files["asyncapi.yaml"] = header + yaml.safe_dump(
        asyncapi_document(), sort_keys=True, allow_unicode=True, width=100, default_flow_style=False
    )
    return files


def export(out_dir: Path = DEFAULT_OUT) -> list[Path]:
    """Write the schemas under out_dir, removing stale event schemas; returns the written paths."""
    files = render()
    events_dir = out_dir / "events"
    events_dir.mkdir(parents=True, exist_ok=True)
    for stale in events_dir.glob("*.json"):
        if f"events/{stale.name}" not in files:
            stale.unlink()
    written = []
    for rel, content in sorted(files.items()):
        path = out_dir / rel
        path.write_text(content, encoding="utf-8")
        written.append(path)
    return written


if __name__ == "__main__":
    for written_path in export(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT):
        print(written_path)
