"""Who may do what on the bus: one role per service (and the operator), as NATS permissions.

A role names the event types its service publishes and the ones it consumes; its NATS permissions
are derived from that and from the contracts' subjects, nothing else. An event type that no role
publishes cannot be published by any service, so a new event is closed until a role claims it (a
unit test checks that every registered type has a publisher and that each service's handlers
consume exactly what its role says).

What a role may do, besides publishing its events:
- consume through its own durable pull consumers only (named as ``Bus.handle`` names them): create
  them with their filter subject, pull from them, ack them, and dead-letter what they deliver;
- look up and create (never update, purge or delete) the puyu streams and key-value buckets, so a
  bucket lost with a NATS restart comes back (updates are the admin's: a stream's sources or subject
  transforms would let whoever may update it inject events);
- read the job board; write it where it runs jobs; write the processed markers where it consumes;
- an inference worker (and a gateway with engines of its own) writes its own announcement in
  ``puyu_workers`` only (the key is its instance), a routing gateway reads them;
- receive replies on its own inbox prefix (derived from its public key), never another's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from contracts.events import (
    EVENT_TYPES,
    CheckpointReady,
    CorpusDeduplicated,
    CorpusIngested,
    DedupItemRequested,
    DedupRequested,
    DeploymentFailed,
    DeploymentReady,
    EvaluateRequested,
    EvaluateShardRequested,
    EvaluationCompleted,
    EventPayload,
    FinetuneRequested,
    IngestRequested,
    JobFailed,
    JobProgress,
    ModelAliasChanged,
    ModelApprovalRequested,
    ModelPromoted,
    ModelRegistered,
    ModelRejected,
    QuantizeRequested,
    TrainCancelRequested,
    TrainRequested,
)
from contracts.events.subjects import (
    DLQ_STREAM,
    EVENTS_PREFIX,
    EVENTS_STREAM,
    JOBS_BUCKET,
    JOBS_STREAM,
    PROCESSED_BUCKET,
    WORKERS_BUCKET,
    dlq_subject,
    stream_for,
)

JS_API = "$JS.API"
ADMIN = "admin"  # the launcher's identity: provisions streams (updates included); never a service's
OPERATOR = "operator"  # a person or the CLI: submits jobs, cancels runs, watches the chain
WORKER = "inference-worker"
GATEWAY = "inference-gateway"
BUCKETS = (JOBS_BUCKET, PROCESSED_BUCKET, WORKERS_BUCKET)
STREAMS = (EVENTS_STREAM, JOBS_STREAM, DLQ_STREAM, *(f"KV_{b}" for b in BUCKETS))


def durable_name(service: str, cls: type[EventPayload]) -> str:
    """The durable consumer of ``service`` for ``cls`` (one per service, shared by its replicas)."""
    return f"{service}--{cls.event_type}".replace(".", "_")


def worker_durable_name(instance: str, cls: type[EventPayload]) -> str:
    """A worker's own consumer (every worker deploys every promotion): named after its instance."""
    return f"{WORKER}-{re.sub(r'[^A-Za-z0-9_-]', '_', instance)}--{cls.event_type.replace('.', '_')}"


def inbox_prefix(public_key: str) -> str:
    """The reply subjects of one identity: nobody else may subscribe to them."""
    return f"_INBOX_{public_key}"


@dataclass(frozen=True)
class Role:
    name: str  # the Bus's service name: its durable consumers are named after it
    publishes: tuple[type[EventPayload], ...]
    consumes: tuple[type[EventPayload], ...] = ()
    announces: bool = False  # writes its own announcement (key: its instance) in puyu_workers
    reads_workers: bool = False  # watches puyu_workers (a routing gateway)
    watches_events: bool = False  # a core subscription to every fact (the CLI's chain watcher)
    per_instance_consumers: bool = False  # its consumers are named after its instance

    @property
    def writes_job_board(self) -> bool:
        return self.name == OPERATOR or any(c.kind == "job" for c in self.consumes)


_JOB_REPORTS = (JobProgress, JobFailed)  # what the job lifecycle and the dead letter publish
_SERVING = (DeploymentReady, DeploymentFailed, JobFailed)

ROLES: dict[str, Role] = {
    role.name: role
    for role in (
        Role(
            "corpus-ingest",
            publishes=(IngestRequested, CorpusIngested, *_JOB_REPORTS),
            consumes=(IngestRequested,),
        ),
        Role(
            "dedup",
            publishes=(DedupRequested, DedupItemRequested, CorpusDeduplicated, *_JOB_REPORTS),
            consumes=(DedupRequested, CorpusIngested, DedupItemRequested),
        ),
        Role(
            "trainer",
            publishes=(TrainRequested, CheckpointReady, *_JOB_REPORTS),
            consumes=(TrainRequested, CorpusDeduplicated, TrainCancelRequested),
        ),
        Role(
            "finetuner",
            publishes=(FinetuneRequested, QuantizeRequested, CheckpointReady, *_JOB_REPORTS),
            consumes=(FinetuneRequested, QuantizeRequested),
        ),
        Role(
            "evaluator",
            publishes=(EvaluateRequested, EvaluateShardRequested, EvaluationCompleted, *_JOB_REPORTS),
            consumes=(ModelRegistered, EvaluateRequested, EvaluateShardRequested),
        ),
        Role(
            "model-registry",
            publishes=(
                ModelRegistered,
                ModelPromoted,
                ModelRejected,
                ModelAliasChanged,
                ModelApprovalRequested,
                JobFailed,
            ),
            consumes=(CheckpointReady, EvaluationCompleted, DeploymentReady, DeploymentFailed),
        ),
        Role(GATEWAY, publishes=_SERVING, consumes=(ModelPromoted,), announces=True, reads_workers=True),
        Role(
            WORKER,
            publishes=_SERVING,
            consumes=(ModelPromoted,),
            announces=True,
            per_instance_consumers=True,
        ),
        Role("agent-runtime", publishes=(JobFailed,), consumes=(CorpusDeduplicated,)),
        Role(
            OPERATOR,
            publishes=(*(c for c in EVENT_TYPES.values() if c.kind == "job"), TrainCancelRequested),
            watches_events=True,
        ),
    )
}


def role_for_service(service: str) -> str:
    """The role of a service package (``inference_gateway`` → ``inference-gateway``)."""
    return service.replace("_", "-")


def publishers_of(cls: type[EventPayload]) -> list[str]:
    return [r.name for r in ROLES.values() if cls in r.publishes]


def _consumer_grants(stream: str, durable: str, subject: str) -> list[str]:
    return [
        f"{JS_API}.CONSUMER.INFO.{stream}.{durable}",
        f"{JS_API}.CONSUMER.CREATE.{stream}.{durable}.{subject}",
        f"{JS_API}.CONSUMER.MSG.NEXT.{stream}.{durable}",
        f"$JS.ACK.{stream}.{durable}.>",
    ]


def _bucket_reads(bucket: str) -> list[str]:
    stream = f"KV_{bucket}"
    return [
        f"{JS_API}.DIRECT.GET.{stream}",
        f"{JS_API}.DIRECT.GET.{stream}.>",
        f"{JS_API}.STREAM.MSG.GET.{stream}",
        # watches and key listings: ephemeral ordered consumers, their flow control and clean-up
        f"{JS_API}.CONSUMER.CREATE.{stream}",
        f"{JS_API}.CONSUMER.CREATE.{stream}.>",
        f"{JS_API}.CONSUMER.INFO.{stream}.*",
        f"{JS_API}.CONSUMER.DELETE.{stream}.*",
        f"$JS.FC.{stream}.>",
    ]


def _other_durables(role: Role) -> list[tuple[str, str]]:
    """(stream, durable) of every other role's consumers: a shared worker identity must not touch them."""
    return [
        (stream_for(cls), durable_name(other.name, cls))
        for other in ROLES.values()
        if other.name != role.name and not other.per_instance_consumers
        for cls in other.consumes
    ]


def permissions(role_name: str, public_key: str, instance: str | None = None) -> dict[str, Any]:
    """The NATS permissions of one identity of ``role_name`` (``instance``: the one process it is,
    where the launcher knows it; without, a worker identity shared by replicas whose names are not
    known in advance, e.g. ``docker compose --scale``)."""
    inbox = f"{inbox_prefix(public_key)}.>"
    if role_name == ADMIN:
        return {"publish": {"allow": [">"]}, "subscribe": {"allow": [">"]}}
    role = ROLES[role_name]
    allow: list[str] = [f"{JS_API}.INFO"]
    deny: list[str] = []
    allow += [f"{JS_API}.STREAM.{op}.{stream}" for stream in STREAMS for op in ("INFO", "CREATE")]
    allow += [cls.subject() for cls in role.publishes]
    for cls in role.consumes:
        stream, subject = stream_for(cls), cls.subject()
        allow.append(dlq_subject(subject))
        if not role.per_instance_consumers:
            allow += _consumer_grants(stream, durable_name(role.name, cls), subject)
        elif instance is not None:
            allow += _consumer_grants(stream, worker_durable_name(instance, cls), subject)
        else:  # any consumer name, but only on its own subject and never another role's consumer
            allow += _consumer_grants(stream, "*", subject)
            for other_stream, durable in _other_durables(role):
                deny += _consumer_grants(other_stream, durable, ">")
    allow += _bucket_reads(JOBS_BUCKET)
    if role.writes_job_board:
        allow.append(f"$KV.{JOBS_BUCKET}.>")
    if role.consumes:
        allow += [*_bucket_reads(PROCESSED_BUCKET), f"$KV.{PROCESSED_BUCKET}.>"]
    if role.reads_workers:
        allow += _bucket_reads(WORKERS_BUCKET)
    if role.announces:
        allow.append(f"$KV.{WORKERS_BUCKET}.{instance if instance is not None else '*'}")
    subscribe = [inbox]
    if role.watches_events:
        subscribe.append(f"{EVENTS_PREFIX}.>")
    publish: dict[str, list[str]] = {"allow": list(dict.fromkeys(allow))}
    if deny:
        publish["deny"] = list(dict.fromkeys(deny))
    return {"publish": publish, "subscribe": {"allow": subscribe}}
