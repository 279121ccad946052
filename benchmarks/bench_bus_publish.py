"""Bus publish throughput: puyu's Bus (envelope + FastStream + Nats-Msg-Id, acknowledged by JetStream)
against the baseline of plain nats-py JetStream publishes of the same bytes, in the same run, on
a fresh nats-server. Prints one JSON line last: both rates and their ratio (puyu / baseline)."""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from pathlib import Path

import nats

from contracts.events import EventEnvelope, JobProgress
from shared.bus import Bus
from shared.natsserver import NatsServer

N = 2000


def _payload(i: int) -> JobProgress:
    return JobProgress(job_id=f"job-{i % 7}", job_kind="bench", stage="step", fraction=(i % 100) / 100)


async def bench_puyu(url: str, run: str) -> float:
    bus = Bus(url, "bench")
    await bus.start()
    try:
        started = time.perf_counter()
        for i in range(N):
            # unique ids: no duplicate short-cut on the server
            await bus.publish(_payload(i), event_id=f"bench-{run}-{i}")
        return N / (time.perf_counter() - started)
    finally:
        await bus.stop()


async def bench_baseline(url: str) -> float:
    nc = await nats.connect(url)
    js = nc.jetstream()
    try:
        started = time.perf_counter()
        for i in range(N):
            data = EventEnvelope.wrap(_payload(i), source="bench").to_bytes()
            await js.publish(JobProgress.subject(), data, headers={"Nats-Msg-Id": f"bench-base-{i}"})
        return N / (time.perf_counter() - started)
    finally:
        await nc.close()


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp, NatsServer(Path(tmp)) as server:
        await bench_puyu(server.url, "warmup")  # creates the streams; warms up both paths
        baseline = await bench_baseline(server.url)
        puyu = await bench_puyu(server.url, "measured")
    print(
        json.dumps(
            {
                "benchmark": "bus_publish",
                "messages": N,
                "puyu_msgs_per_s": round(puyu, 1),
                "baseline": "nats-py js.publish",
                "baseline_msgs_per_s": round(baseline, 1),
                "ratio": round(puyu / baseline, 3),
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
