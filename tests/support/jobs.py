"""Waiting on the job board, for a state no event announces (or one a test did not wait for).

A job's final state is written before the event that reports its outcome (``shared.bus.lifecycle``):
a test that heard that event reads the board once."""

from __future__ import annotations

import asyncio

from shared.bus import Bus
from shared.bus.jobs import JobStatus


async def wait_for_job_state(bus: Bus, job_id: str, state: str, timeout: float = 30) -> JobStatus:
    """The job's status once it is ``state``; fails naming the last status seen after ``timeout`` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        status = await bus.jobs.get(job_id)
        if status is not None and status.state == state:
            return status
        if loop.time() >= deadline:
            raise AssertionError(f"{job_id} did not reach {state} in {timeout:.0f}s: {status}")
        await asyncio.sleep(0.2)
