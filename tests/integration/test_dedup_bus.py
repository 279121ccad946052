"""dedup against a real nats-server: corpus.ingested (automatic) and dedup.requested → corpus.deduplicated."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import json
import random
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from contracts.events import (
    CorpusDeduplicated,
    CorpusIngested,
    DatasetRef,
    DedupOptions,
    DedupRequested,
    JobFailed,
    PipelineSpec,
    StageStats,
)
from services.dedup.app import create_service
from services.dedup.config import DedupSettings
from shared.bus import Bus, HandlerContext
from shared.natsserver import NatsServer, free_port
from shared.ports import SERVICES

pytestmark = pytest.mark.integration
WORDS = (
    "river mountain harbour market library festival valley winter summer railway copper silk apples".split()
)


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[tuple[DedupSettings, Bus, asyncio.Queue[object]]]:
    with NatsServer(tmp_path / "nats") as nats:
        idx = 1 + SERVICES.index("dedup")
        settings = DedupSettings(
            home=tmp_path / "home",
            nats_url=nats.url,
            log_json=False,
            grpc_port_base=free_port() - idx,
            http_port_base=free_port() - idx,
        )
        runtime = create_service(settings).runtime
        task = asyncio.create_task(runtime.run())
        client = Bus(nats.url, "test-client")
        events: asyncio.Queue[object] = asyncio.Queue()

        @client.handle(CorpusDeduplicated)
        async def on_dedup(ctx: HandlerContext[CorpusDeduplicated]) -> None:
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
            yield settings, client, events
        finally:
            runtime.stop()
            await client.stop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 20)


def write_dataset(root: Path, dataset_id: str) -> DatasetRef:
    """An ingested-style dataset: 20 distinct docs, 2 exact copies, 2 near copies (3 words changed)."""
    rng = random.Random(5)
    docs = {f"d{i:02d}": " ".join(rng.choice(WORDS) for _ in range(300)) for i in range(20)}
    docs["e1"] = docs["d01"]
    docs["e2"] = docs["d02"]
    for name, src in (("n1", "d03"), ("n2", "d04")):
        words = docs[src].split()
        for i in (10, 150, 290):
            words[i] = "changed"
        docs[name] = " ".join(words)
    folder = root / "datasets" / dataset_id
    (folder / "data").mkdir(parents=True)
    with gzip.open(folder / "data" / "part-00000.jsonl.gz", "wt") as f:
        f.writelines(json.dumps({"id": k, "text": v, "lang": "en"}) + "\n" for k, v in docs.items())
    manifest = json.dumps(
        {"dataset_id": dataset_id, "documents": len(docs), "shards": [{"path": "data/part-00000.jsonl.gz"}]}
    ).encode()
    (folder / "manifest.json").write_bytes(manifest)
    return DatasetRef(
        dataset_id=dataset_id,
        manifest_uri=(folder / "manifest.json").resolve().as_uri(),
        digest=hashlib.sha256(manifest).hexdigest(),
    )


async def test_ingested_corpus_is_deduplicated(stack) -> None:  # type: ignore[no-untyped-def]
    settings, client, events = stack
    source = write_dataset(settings.home / "artifacts", "sample-abcd1234")
    pipeline = PipelineSpec(dedup=DedupOptions(bands=16, rows=8))
    ingested = CorpusIngested(
        job_id="job1",
        dataset=source,
        documents=24,
        pipeline=pipeline,
        stages=[StageStats(stage="read", docs_in=24, docs_out=24)],
    )
    await client.publish(ingested, event_id="ingested:job1")
    envelope = await asyncio.wait_for(events.get(), 30)
    assert envelope.id == f"dedup:{source.dataset_id}"
    event = envelope.payload_as(CorpusDeduplicated)
    assert event.pipeline == pipeline and event.source == source
    assert (event.documents_in, event.documents_out, event.exact_duplicates, event.near_duplicates) == (
        24,
        20,
        2,
        2,
    )
    out = settings.home / "artifacts" / "datasets" / "sample-abcd1234-dedup"
    assert event.dataset.manifest_uri == (out / "manifest.json").resolve().as_uri()
    assert event.dataset.digest == hashlib.sha256((out / "manifest.json").read_bytes()).hexdigest()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["options"]["bands"] == 16  # options came from pipeline.dedup
    kept = {json.loads(line)["id"] for s in manifest["shards"] for line in gzip.open(out / s["path"])}
    assert kept == {f"d{i:02d}" for i in range(20)}
    removed = {
        json.loads(line)["id"]: json.loads(line)
        for s in manifest["removed_shards"]
        for line in gzip.open(out / s["path"])
    }
    assert removed["n1"]["kept_id"] == "d03" and removed["e2"]["kept_id"] == "d02"
    status = await client.jobs.get("dedup-job1")  # final before the event went out: no polling
    assert status is not None and status.state == "succeeded"


async def test_dedup_job_and_rejection(stack) -> None:  # type: ignore[no-untyped-def]
    settings, client, events = stack
    source = write_dataset(settings.home / "artifacts", "other-00000000")
    job_id = uuid.uuid4().hex
    await client.publish(DedupRequested(job_id=job_id, dataset=source, options=DedupOptions(near=False)))
    event = (await asyncio.wait_for(events.get(), 30)).payload_as(CorpusDeduplicated)  # type: ignore[attr-defined]
    assert (event.job_id, event.exact_duplicates, event.near_duplicates) == (job_id, 2, 0)

    missing = source.model_copy(
        update={"dataset_id": "gone", "manifest_uri": "file:///no/such/manifest.json"}
    )
    await client.publish(DedupRequested(job_id="bad-" + job_id, dataset=missing))
    failed = await asyncio.wait_for(events.get(), 30)
    assert isinstance(failed, JobFailed) and "gone" in failed.error
