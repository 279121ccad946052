"""Two dedup replicas (separate processes) share one job's work items on a real nats-server; one is
SIGKILLed in the middle of an item. The job still ends with the single-process output, the killed
item is redone by the other replica, and no finished item is computed twice (item records)."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import json
import os
import signal
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest

from contracts.events import CorpusDeduplicated, DatasetRef, DedupOptions, DedupRequested, JobFailed
from services.cli.stack import Stack
from services.dedup.core import run_dedup
from shared.bus import Bus, HandlerContext
from shared.natsserver import NatsServer, free_port
from shared.settings import CommonSettings

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.slow]
SHARDS, DOCS_PER_SHARD, WORDS_PER_DOC = 16, 600, 160
OPTIONS = DedupOptions(bands=14, rows=8)


def _free_base(span: int = 8) -> int:
    def free(port: int) -> bool:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
        return True

    while True:
        base = free_port() - 1
        if base > 1024 and all(free(base + i) for i in range(1, span + 1)):
            return base


def write_dataset(root: Path, dataset_id: str) -> tuple[Path, DatasetRef]:
    """16 shards of 600 documents; every 7th document copies an earlier one (exactly, or with a few
    words changed), often from another shard, so clusters cross shards."""
    rng = np.random.default_rng(3)
    vocab = np.array([f"w{i:04d}" for i in range(3000)])
    folder = root / "datasets" / dataset_id
    (folder / "data").mkdir(parents=True)
    docs: list[list[str]] = []
    shards = []
    for s in range(SHARDS):
        path = folder / "data" / f"part-{s:05d}.jsonl.gz"
        with gzip.open(path, "wt", compresslevel=1) as f:
            for i in range(DOCS_PER_SHARD):
                words = list(vocab[rng.integers(0, len(vocab), WORDS_PER_DOC)])
                if docs and i % 7 == 3:
                    words = list(docs[int(rng.integers(0, len(docs)))])
                    if i % 2:
                        for j in rng.integers(0, WORDS_PER_DOC, 3):
                            words[j] = "changed"
                docs.append(words)
                f.write(json.dumps({"id": f"s{s:02d}-{i:04d}", "text": " ".join(words)}) + "\n")
        shards.append({"path": f"data/{path.name}", "documents": DOCS_PER_SHARD})
    manifest = json.dumps({"dataset_id": dataset_id, "documents": len(docs), "shards": shards}).encode()
    (folder / "manifest.json").write_bytes(manifest)
    ref = DatasetRef(
        dataset_id=dataset_id,
        manifest_uri=(folder / "manifest.json").resolve().as_uri(),
        digest=hashlib.sha256(manifest).hexdigest(),
    )
    return folder.resolve(), ref


def item_records(artifacts: Path) -> list[dict[str, object]]:
    """Every item record of every dedup job under the artifact root (see services/dedup/core/work.py)."""
    out = []
    for path in sorted(artifacts.glob("dedup-work/*/items/*/*")):
        if path.name.endswith(".tmp"):
            continue
        stage, index = path.parent.name.rsplit("-", 1)
        try:
            body = json.loads(path.read_text())
        except (OSError, ValueError):  # being written (the rename is atomic, but listing is not)
            continue
        out.append({**body, "stage": stage, "index": int(index), "event": path.suffix[1:], "path": path})
    return out


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[tuple[Stack, Stack, CommonSettings]]:
    """Two dedup processes on one nats-server and one artifact store; no restarts."""
    with NatsServer(tmp_path / "nats") as nats:
        stacks = []
        for _ in range(2):
            settings = CommonSettings(
                home=tmp_path / "home",
                nats_url=nats.url,
                log_json=False,
                grpc_port_base=_free_base(),
                http_port_base=_free_base(),
            )
            # the killed item moves after the ack wait; a live worker beats every third of it (3 s once
            # let a loaded machine's late beat hand a live item to the other replica: done twice)
            env = {"PUYU_LOG_JSON": "false", "OMP_NUM_THREADS": "1", "PUYU_DEDUP_ITEM_ACK_WAIT": "10"}
            stacks.append(Stack(settings, services=("dedup",), extra_env=env, restart=False))
        try:
            for stack in stacks:
                stack.start()
            for stack in stacks:
                stack.wait_healthy(timeout=240)
            yield stacks[0], stacks[1], settings
        finally:
            for stack in stacks:
                stack.stop()


@contextlib.asynccontextmanager
async def client(url: str) -> AsyncIterator[tuple[Bus, asyncio.Queue[object]]]:
    bus = Bus(url, "test-client")
    events: asyncio.Queue[object] = asyncio.Queue()

    @bus.handle(CorpusDeduplicated)
    async def on_done(ctx: HandlerContext[CorpusDeduplicated]) -> None:
        await events.put(ctx.payload)

    @bus.handle(JobFailed)
    async def on_failed(ctx: HandlerContext[JobFailed]) -> None:
        await events.put(ctx.payload)

    await bus.start()
    try:
        yield bus, events
    finally:
        await bus.stop()


async def kill_mid_item(victim: int, artifacts: Path, deadline: float) -> tuple[str, int]:
    """SIGKILL ``victim`` while it computes an item, after it has finished at least one.

    It is frozen (SIGSTOP) first and killed only if the item it started is still without a
    result and a done record: then the kill certainly lands mid-item. Returns the item."""
    while time.monotonic() < deadline:
        mine = [r for r in item_records(artifacts) if r["pid"] == victim and r["stage"] == "signatures"]
        done = {(r["stage"], r["index"]) for r in mine if r["event"] == "done"}
        running = [r for r in mine if r["event"] == "started" and (r["stage"], r["index"]) not in done]
        if done and running:
            os.kill(victim, signal.SIGSTOP)
            stage, index = str(running[0]["stage"]), int(running[0]["index"])  # type: ignore[call-overload]
            work = Path(running[0]["path"]).parents[2]  # type: ignore[arg-type]
            finished = (work / "signatures" / f"{index:05d}.npz").exists() or any(
                r["pid"] == victim and r["event"] == "done" and (r["stage"], r["index"]) == (stage, index)
                for r in item_records(artifacts)
            )
            if not finished:
                os.kill(victim, signal.SIGKILL)
                return stage, index
            os.kill(victim, signal.SIGCONT)  # it had just finished: try the next item
        await asyncio.sleep(0.003)
    raise AssertionError("the victim never started a second item: the job was over too soon")


async def test_two_replicas_share_a_job_and_survive_a_sigkill(
    replicas: tuple[Stack, Stack, CommonSettings], tmp_path: Path
) -> None:
    a, b, settings = replicas
    artifacts = settings.home.resolve() / "artifacts"
    folder, source = write_dataset(artifacts, "big-0000cafe")
    pid_a, pid_b = a.procs["dedup"].pid, b.procs["dedup"].pid
    async with client(settings.nats_url) as (bus, events):
        await bus.publish(DedupRequested(job_id="two-replicas", dataset=source, options=OPTIONS))
        killed = await kill_mid_item(pid_a, artifacts, time.monotonic() + 120)
        event = await asyncio.wait_for(events.get(), 180)
        assert isinstance(event, CorpusDeduplicated), event
        status = await bus.jobs.get("two-replicas")
    assert a.procs["dedup"].wait(5) == -signal.SIGKILL
    assert status is not None and status.state == "succeeded"

    # The same dataset as one process running the CLI's core on the same folder.
    out = artifacts / "datasets" / "big-0000cafe-dedup"
    reference = tmp_path / "reference"
    expected = run_dedup([folder], reference, "big-0000cafe-dedup", OPTIONS)
    got = json.loads((out / "manifest.json").read_text())
    assert got == expected  # shards' sha256, stats, clusters, options, index, inputs
    assert got["stats"]["exact_duplicates"] > 100 and got["stats"]["near_duplicates"] > 100
    for key in ("shards", "removed_shards"):
        for shard in got[key]:
            assert (out / shard["path"]).read_bytes() == (reference / shard["path"]).read_bytes()
    with np.load(out / "index" / "index.npz") as x, np.load(reference / "index" / "index.npz") as y:
        assert all((x[k] == y[k]).all() for k in ("ids", "keys", "sigs"))

    # Item records: both replicas worked; the killed item was redone by B; nothing else twice.
    records = item_records(artifacts)
    done = Counter((r["stage"], r["index"]) for r in records if r["event"] == "done")
    plan_items = (
        [("signatures", i) for i in range(SHARDS)] + [("pairs", i) for i in range(4)] + [("cluster", 0)]
    )
    assert sorted(done) == sorted(plan_items) and set(done.values()) == {1}, done
    by = {(r["stage"], r["index"]): r["pid"] for r in records if r["event"] == "done"}
    assert killed in by and by[killed] == pid_b
    started = [(r["pid"], r["delivery"]) for r in records if (r["stage"], r["index"]) == killed]
    assert sorted(started, key=str) == sorted([(pid_a, 1), (pid_b, 2), (pid_b, 2)], key=str)
    finished_by_a = {k for k, pid in by.items() if pid == pid_a}
    assert finished_by_a, "the killed replica had finished items before it died"
    assert all(r["pid"] == pid_a for r in records if (r["stage"], r["index"]) in finished_by_a)
    assert {pid for pid in by.values()} == {pid_a, pid_b}
    summary = status.result["items"]
    assert summary["signatures"]["done"] == SHARDS and summary["signatures"]["started"] == SHARDS + 1
    assert summary["pairs"]["done"] == 4 and summary["cluster"]["done"] == 1
