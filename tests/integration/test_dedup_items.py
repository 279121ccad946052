"""The distributed path on a real nats-server, one in-process replica: Parquet datasets through the
work items, the job's item summary, and a bad shard failing the job with its name."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from contracts.events import CorpusDeduplicated, DatasetRef, DedupOptions, DedupRequested, JobFailed
from services.dedup.app import create_service
from services.dedup.config import DedupSettings
from shared.bus import Bus, HandlerContext
from shared.natsserver import NatsServer, free_port
from shared.ports import SERVICES
from shared.shards import ShardWriter, iter_records
from tests.support.jobs import wait_for_job_state

pytestmark = pytest.mark.integration
WORDS = "river mountain harbour market library festival valley winter summer railway copper silk".split()


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
            dedup_item_ack_wait=5.0,
        )
        runtime = create_service(settings).runtime
        task = asyncio.create_task(runtime.run())
        client = Bus(nats.url, "test-client")
        events: asyncio.Queue[object] = asyncio.Queue()

        @client.handle(CorpusDeduplicated)
        async def on_dedup(ctx: HandlerContext[CorpusDeduplicated]) -> None:
            await events.put(ctx.payload)

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


def write_dataset(root: Path, dataset_id: str, fmt: str) -> DatasetRef:
    """3 shards of 8 documents: 16 distinct, 4 exact copies, 4 near copies (2 words changed)."""
    rng = random.Random(7)
    base = [" ".join(rng.choice(WORDS) for _ in range(120)) for _ in range(16)]
    rows = [{"id": f"d{i:02d}", "text": t, "meta": {"i": i}} for i, t in enumerate(base)]
    rows += [{"id": f"e{i}", "text": base[i]} for i in range(4)]
    for i in range(4):
        words = base[8 + i].split()
        words[3], words[90] = "changed", "edited"
        rows.append({"id": f"n{i}", "text": " ".join(words)})
    folder = root / "datasets" / dataset_id
    w = ShardWriter(folder / "data", "part", 8, folder, fmt)
    for r in rows:
        w.write(r)
    manifest = json.dumps({"dataset_id": dataset_id, "documents": len(rows), "shards": w.close()}).encode()
    (folder / "manifest.json").write_bytes(manifest)
    return DatasetRef(
        dataset_id=dataset_id,
        manifest_uri=(folder / "manifest.json").resolve().as_uri(),
        digest=hashlib.sha256(manifest).hexdigest(),
    )


async def test_parquet_dataset_through_work_items(stack) -> None:  # type: ignore[no-untyped-def]
    settings, client, events = stack
    source = write_dataset(settings.home / "artifacts", "pq-00000001", "parquet")
    await client.publish(DedupRequested(job_id="pq-job", dataset=source))
    event = await asyncio.wait_for(events.get(), 60)
    assert isinstance(event, CorpusDeduplicated), event
    assert (event.documents_in, event.exact_duplicates, event.near_duplicates) == (24, 4, 4)
    out = settings.home / "artifacts" / "datasets" / "pq-00000001-dedup"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == "parquet"
    kept = [r for s in manifest["shards"] for r in iter_records(out / s["path"])]
    assert [r["id"] for r in kept] == [f"d{i:02d}" for i in range(16)] and kept[5]["meta"] == {"i": 5}
    status = await client.jobs.get("pq-job")  # final before the event went out: no polling
    assert status is not None and status.state == "succeeded"
    items = status.result["items"]
    assert {k: (v["started"], v["done"]) for k, v in items.items()} == {
        "signatures": (3, 3),
        "pairs": (4, 4),
        "cluster": (1, 1),
    }
    work = next((settings.home / "artifacts" / "dedup-work").iterdir())
    assert not (work / "signatures").exists() and (work / "cluster.json").exists()  # intermediates dropped

    # Asked again: answered from the finished run, nothing computed again.
    await client.publish(DedupRequested(job_id="pq-job", dataset=source), event_id="again")
    await asyncio.sleep(2)
    again = await client.jobs.get("pq-job")
    assert again is not None and again.state == "succeeded"
    assert again.result["items"] == items


async def test_a_damaged_shard_fails_the_job_and_names_it(stack) -> None:  # type: ignore[no-untyped-def]
    settings, client, events = stack
    source = write_dataset(settings.home / "artifacts", "bad-00000002", "jsonl.gz")
    shard = settings.home / "artifacts" / "datasets" / "bad-00000002" / "data" / "part-00001.jsonl.gz"
    shard.write_bytes(shard.read_bytes()[:-40])  # truncated: the manifest (and its digest) is intact
    await client.publish(DedupRequested(job_id="bad-job", dataset=source, options=DedupOptions(near=False)))
    failed = await asyncio.wait_for(events.get(), 60)
    assert isinstance(failed, JobFailed), failed
    assert "part-00001.jsonl.gz: unreadable shard" in failed.error
    await wait_for_job_state(client, "bad-job", "failed")
    await asyncio.sleep(1.0)  # the other items finish: their progress must not revive the job
    status = await client.jobs.get("bad-job")
    assert status is not None and status.state == "failed" and "part-00001" in status.message
