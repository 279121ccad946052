"""corpus-ingest against a real nats-server: bus request → dataset + corpus.ingested; gRPC Jobs."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from contracts.events import CorpusIngested, IngestOptions, IngestRequested, JobFailed, PipelineSpec
from contracts.proto.puyu.jobs.v1 import jobs_pb2, jobs_pb2_grpc
from services.corpus_ingest.app import create_service
from services.corpus_ingest.config import IngestSettings
from shared.bus import Bus, HandlerContext
from shared.natsserver import NatsServer, free_port
from shared.ports import SERVICES
from shared.samples import write_sample_corpus
from tests.support.jobs import wait_for_job_state

pytestmark = pytest.mark.integration


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[tuple[IngestSettings, Bus, asyncio.Queue[object], int]]:
    with NatsServer(tmp_path / "nats") as nats:
        idx = 1 + SERVICES.index("corpus_ingest")
        settings = IngestSettings(
            home=tmp_path / "home",
            data_roots=[str(tmp_path / "src"), str(tmp_path / "docs.jsonl")],  # what the tests ingest
            nats_url=nats.url,
            log_json=False,
            grpc_port_base=free_port() - idx,
            http_port_base=free_port() - idx,
        )
        runtime = create_service(settings).runtime
        task = asyncio.create_task(runtime.run())
        client = Bus(nats.url, "test-client")
        events: asyncio.Queue[object] = asyncio.Queue()

        @client.handle(CorpusIngested)
        async def on_ingested(ctx: HandlerContext[CorpusIngested]) -> None:
            await events.put(ctx.envelope)

        @client.handle(JobFailed)
        async def on_failed(ctx: HandlerContext[JobFailed]) -> None:
            await events.put(ctx.payload)

        await client.start()
        for _ in range(100):
            if runtime.bus.started:
                break
            await asyncio.sleep(0.1)
        try:
            yield settings, client, events, runtime.grpc_port
        finally:
            runtime.stop()
            await client.stop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 20)


async def test_ingest_request_produces_dataset_and_event(stack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings, client, events, _ = stack
    sources = [str(p) for p in write_sample_corpus(tmp_path / "src", n_articles=120)]
    job_id = uuid.uuid4().hex
    pipeline = PipelineSpec()
    req = IngestRequested(
        job_id=job_id,
        dataset_name="sample",
        sources=sources,
        pipeline=pipeline,
        options=IngestOptions(shard_docs=100),
    )
    await client.publish(req, event_id=f"ingest:{job_id}")
    envelope = await asyncio.wait_for(events.get(), 30)
    assert envelope.id == f"ingested:{job_id}"
    event = envelope.payload_as(CorpusIngested)
    assert event.dataset.dataset_id == f"sample-{job_id[:8]}" and event.pipeline == pipeline
    manifest_path = settings.home / "artifacts" / "datasets" / event.dataset.dataset_id / "manifest.json"
    assert event.dataset.manifest_uri == manifest_path.resolve().as_uri()
    manifest = json.loads(manifest_path.read_text())
    assert manifest["documents"] == event.documents > 100
    rows = [
        json.loads(line) for s in manifest["shards"] for line in gzip.open(manifest_path.parent / s["path"])
    ]
    assert len(rows) == event.documents and {r["lang"] for r in rows} <= {"en", "zh"}
    assert manifest["exclusions_by_filter"]["language"] > 0
    status = await client.jobs.get(job_id)  # final before the event went out: no polling
    assert status is not None and status.state == "succeeded"
    assert status.result["dataset"]["dataset_id"] == event.dataset.dataset_id

    # A request that can never succeed is rejected, naming the path, and the service lives on.
    bad = IngestRequested(job_id="bad-" + job_id, dataset_name="x", sources=["/no/such/corpus.jsonl"])
    await client.publish(bad)
    failed = await asyncio.wait_for(events.get(), 30)
    assert isinstance(failed, JobFailed) and "/no/such/corpus.jsonl" in failed.error
    await wait_for_job_state(client, bad.job_id, "failed")


async def test_grpc_jobs_submit_and_watch(stack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, _, _, port = stack
    src = tmp_path / "docs.jsonl"
    src.write_text(
        "".join(
            json.dumps(
                {
                    "text": f"Document {i} tells of the river town and its busy market "
                    f"where traders sell copper and salt."
                }
            )
            + "\n"
            for i in range(5)
        )
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = jobs_pb2_grpc.JobsStub(channel)
        spec = {"dataset_name": "tiny", "sources": [str(src)]}
        submitted = await stub.Submit(jobs_pb2.SubmitJobRequest(kind="ingest", spec_json=json.dumps(spec)))
        assert submitted.state == "queued" and submitted.job_id
        states = [s.state async for s in stub.Watch(jobs_pb2.GetJobRequest(job_id=submitted.job_id))]
        assert states[-1] == "succeeded"
        final = await stub.Get(jobs_pb2.GetJobRequest(job_id=submitted.job_id))
        assert json.loads(final.result_json)["documents"] == 5
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Submit(jobs_pb2.SubmitJobRequest(kind="ingest", spec_json='{"sources": []}'))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Submit(jobs_pb2.SubmitJobRequest(kind="train", spec_json="{}"))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Get(jobs_pb2.GetJobRequest(job_id="nope"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_sources_outside_the_read_roots_are_refused(stack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings, client, events, port = stack
    roots = f"{settings.artifact_root_uri}, {tmp_path / 'src'}, {tmp_path / 'docs.jsonl'}"
    refusal = f"source /etc/passwd is outside the folders this service may read ({roots}; PUYU_DATA_ROOTS adds folders)"
    # on the bus: the job is rejected with the reason
    job_id = "etc-" + uuid.uuid4().hex
    await client.publish(IngestRequested(job_id=job_id, dataset_name="x", sources=["/etc/passwd"]))
    failed = await asyncio.wait_for(events.get(), 30)
    assert isinstance(failed, JobFailed) and failed.error == f"rejected: ingest job {job_id}: {refusal}"
    # a link inside a root that leads out of it is outside too
    (tmp_path / "src").mkdir(exist_ok=True)
    (tmp_path / "src" / "passwd.txt").symlink_to("/etc/passwd")
    await client.publish(
        IngestRequested(job_id="link-" + job_id, dataset_name="x", sources=[str(tmp_path / "src")])
    )
    failed = await asyncio.wait_for(events.get(), 30)
    assert (
        isinstance(failed, JobFailed)
        and f"ingest job link-{job_id}: file /etc/passwd is outside" in failed.error
    )
    # through gRPC Jobs/Submit: refused at once, no job queued
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = jobs_pb2_grpc.JobsStub(channel)
        spec = {"dataset_name": "x", "sources": ["/etc/passwd"]}
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Submit(jobs_pb2.SubmitJobRequest(kind="ingest", spec_json=json.dumps(spec)))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details() == f"invalid ingest job spec: {refusal}"
