"""corpus.deduplicated on a real nats-server → the agent runtime indexes the dataset → search_corpus finds it."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from contracts.events import CorpusDeduplicated, DatasetRef
from contracts.events.subjects import DLQ_STREAM, dlq_subject
from services.agent_runtime.app import create_service
from services.agent_runtime.config import AgentRuntimeSettings
from services.agent_runtime.core import AgentRuntime
from shared.bus import Bus
from shared.natsserver import NatsServer, free_port
from shared.service import Service

pytestmark = pytest.mark.integration


@pytest.fixture
def nats(tmp_path: Path):
    with NatsServer(tmp_path / "nats") as server:
        yield server


def write_dataset(root: Path, docs: list[dict[str, str]]) -> str:
    root.mkdir(parents=True)
    with gzip.open(root / "shard-00000.jsonl.gz", "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(d) + "\n" for d in docs)
    (root / "manifest.json").write_text(
        json.dumps(
            {
                "dataset_id": root.name,
                "documents": 1,
                "shards": [{"path": (root / "shard-00000.jsonl.gz").as_uri()}],
            }
        )
    )
    return (root / "manifest.json").as_uri()


def dedup_event(dataset_id: str, manifest_uri: str) -> CorpusDeduplicated:
    ref = DatasetRef(dataset_id=dataset_id, manifest_uri=manifest_uri, digest="0" * 64)
    return CorpusDeduplicated(
        job_id=f"job-{dataset_id}",
        source=ref,
        dataset=ref,
        documents_in=2,
        documents_out=2,
        exact_duplicates=0,
        near_duplicates=0,
    )


async def start(settings: AgentRuntimeSettings) -> tuple[Service[AgentRuntime], asyncio.Task[None]]:
    service = create_service(settings)
    task = asyncio.create_task(service.run())
    async with httpx.AsyncClient() as client:
        for _ in range(200):
            try:
                if (
                    await client.get(f"http://127.0.0.1:{settings.agent_http_port}/health")
                ).status_code == 200:
                    return service, task
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError("agent runtime did not start")


async def search(port: int, query: str, wait: float = 15.0) -> str:
    async with httpx.AsyncClient() as client:
        deadline = asyncio.get_running_loop().time() + wait
        while True:
            r = await client.post(
                f"http://127.0.0.1:{port}/v1/tools/search_corpus/run",
                json={"arguments": {"query": query, "k": 1}},
            )
            r.raise_for_status()
            out: str = r.json()["output"]
            if out.startswith("[") or asyncio.get_running_loop().time() > deadline:
                return out
            await asyncio.sleep(0.1)


@pytest.fixture
async def publisher(nats: NatsServer) -> AsyncIterator[Bus]:
    bus = Bus(nats.url, "test-publisher")
    await bus.start()
    yield bus
    await bus.stop()


async def test_deduplicated_corpus_becomes_searchable_and_survives_a_restart(
    tmp_path: Path, nats: NatsServer, publisher: Bus
) -> None:
    settings = AgentRuntimeSettings(
        home=tmp_path / "home",
        nats_url=nats.url,
        log_json=False,
        agent_grpc_port=free_port(),
        agent_http_port=free_port(),
        agent_embeddings="off",  # BM25 answers these; the dense path is tested in the unit tests
    )
    service, task = await start(settings)
    port = settings.agent_http_port
    assert port is not None
    try:
        assert await search(port, "capital of Aldoria", wait=0) == "no corpus is indexed yet"
        # an unreadable dataset is refused (dead-lettered) and the service keeps going
        await publisher.publish(dedup_event("broken", (tmp_path / "nowhere" / "manifest.json").as_uri()))
        uri = write_dataset(
            tmp_path / "atlas-dedup",
            [
                {"id": "article-1", "text": "The capital of Aldoria is Velm. Aldoria is known for tea."},
                {"id": "article-2", "text": "The capital of Brenmark is Holmport."},
            ],
        )
        await publisher.publish(dedup_event("atlas-dedup", uri))
        assert await search(port, "capital of Aldoria") == "[article-1] The capital of Aldoria is Velm."
        js = publisher.broker.connection.jetstream()
        dead = await js.get_last_msg(DLQ_STREAM, dlq_subject(CorpusDeduplicated.subject()))
        assert dead.headers is not None and "manifest not found" in dead.headers["Puyu-Error"]
    finally:
        service.stop()
        await task

    # a new process rebuilds the index from the recorded datasets, with no event replayed
    settings.agent_http_port, settings.agent_grpc_port = free_port(), free_port()
    service, task = await start(settings)
    try:
        assert await search(settings.agent_http_port, "Brenmark", wait=0) == (
            "[article-2] The capital of Brenmark is Holmport."
        )
    finally:
        service.stop()
        await task
