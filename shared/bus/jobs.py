"""Job status, kept in a JetStream key-value bucket shared by all replicas (what `puyu status` reads)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any, Literal

from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue
from pydantic import BaseModel, Field

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
TERMINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})


class JobStatus(BaseModel):
    job_id: str
    kind: str
    state: JobState
    correlation_id: str | None = None
    stage: str = ""
    fraction: float = 0.0
    message: str = ""
    result: dict[str, Any] = Field(default_factory=dict)
    created_at: float = Field(default_factory=time.time)
    updated_at: float = Field(default_factory=time.time)


def job_key(job_id: str) -> str:
    """KV keys allow [-/_=.a-zA-Z0-9]: map anything else to '_'."""
    return "".join(c if c.isalnum() or c in "-_=." else "_" for c in job_id)


class JobBoard:
    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    async def get(self, job_id: str) -> JobStatus | None:
        try:
            entry = await self.kv.get(job_key(job_id))
        except KeyNotFoundError:
            return None
        if entry.value is None:
            return None
        return JobStatus.model_validate_json(entry.value)

    async def put(self, status: JobStatus) -> None:
        status.updated_at = time.time()
        await self.kv.put(job_key(status.job_id), status.model_dump_json().encode())

    async def update(self, job_id: str, kind: str, **changes: Any) -> JobStatus:
        status = await self.get(job_id) or JobStatus(job_id=job_id, kind=kind, state="queued")
        updated = status.model_copy(update=changes)
        await self.put(updated)
        return updated

    async def watch(self, job_id: str) -> AsyncIterator[JobStatus]:
        """Every state the job passes through (the bucket's recent history first), until it ends."""
        watcher = await self.kv.watch(job_key(job_id), include_history=True)
        try:
            async for entry in watcher:
                if entry is None or not entry.value:
                    continue  # the "caught up" marker, or a delete
                status = JobStatus.model_validate_json(entry.value)
                yield status
                if status.state in TERMINAL_STATES:
                    return
        finally:
            await watcher.stop()

    async def all(self) -> list[JobStatus]:
        try:
            keys = await self.kv.keys()
        except Exception:  # nats raises NoKeysError on an empty bucket
            return []
        out = []
        for key in keys:
            try:
                entry = await self.kv.get(key)
            except KeyNotFoundError:
                continue
            if entry.value:
                out.append(JobStatus.model_validate_json(entry.value))
        return sorted(out, key=lambda s: s.created_at)
