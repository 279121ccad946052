"""One job's lifecycle on the job board, written once for every handler (FastStream-middleware style).

    async with ctx.job(p.job_id, KIND, stage="ingest") as job:
        result = await asyncio.to_thread(core.run, ..., progress=job.thread_progress())
        job.succeed(f"{n} documents", result={...}, event=Done(...), event_id=f"done:{p.job_id}")

- entering marks the job running (with the request's correlation id);
- ``job.progress`` / ``job.thread_progress()`` report progress (events and board);
- leaving normally writes the outcome the handler recorded (``succeed``, ``cancel``, or
  ``continues_elsewhere`` when a later stage, possibly on another replica, ends the job); with none
  recorded the job succeeded;
- the event that reports a success (``succeed(..., event=...)``) is published after the board says
  succeeded, so whoever hears it reads the final state; if that publish fails the delivery fails
  like any other (retried; the event id makes the re-publish one copy);
- a ``Refusal`` raised inside (a core's own exception type) becomes ``JobRejected``: no retry, the
  job is failed with the reason; any other exception is a failure the bus retries with back-off, and
  the board says which attempt failed and why; the last attempt marks the job failed. The lifecycle
  writes the failure itself, so a job started by a fact (e.g. an evaluation that a registration
  triggers), which the dead letter does not know as a job, ends failed too.
"""

from __future__ import annotations

import logging
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

from shared.errors import Refusal

if TYPE_CHECKING:
    from contracts.events import EventPayload
    from shared.bus.bus import HandlerContext, ThreadProgress

log = logging.getLogger(__name__)
Outcome = Literal["succeeded", "cancelled", "continues"]


class JobRun:
    def __init__(self, ctx: HandlerContext[Any], job_id: str, kind: str, stage: str, message: str) -> None:
        self.ctx, self.job_id, self.kind = ctx, job_id, kind
        self._stage, self._message = stage, message
        self._outcome: Outcome | None = None
        self._final_message = ""
        self._result: dict[str, Any] = {}
        self._event: EventPayload | None = None
        self._event_id: str | None = None
        self._reporters: list[ThreadProgress] = []
        self.cancelled = False  # cancelled before this delivery started: the handler returns at once

    # ---------------------------------------------------------------------------- while running
    async def progress(self, stage: str, fraction: float, message: str = "", **metrics: float) -> None:
        await self.ctx.progress(self.job_id, self.kind, stage, fraction, message, **metrics)

    def thread_progress(self, min_interval: float = 1.0) -> ThreadProgress:
        """A rate-limited progress callback for compute running in a worker thread; flushed on exit."""
        reporter = self.ctx.progress_from_thread(self.job_id, self.kind, min_interval)
        self._reporters.append(reporter)
        return reporter

    # ---------------------------------------------------------------------------- outcomes
    def succeed(
        self,
        message: str = "",
        result: dict[str, Any] | None = None,
        *,
        event: EventPayload | None = None,
        event_id: str | None = None,
    ) -> None:
        """``event``, the job's outcome, is published on leaving, once the board says succeeded."""
        self._outcome, self._final_message, self._result = "succeeded", message, result or {}
        self._event, self._event_id = event, event_id

    def cancel(self, message: str) -> None:
        self._outcome, self._final_message = "cancelled", message

    def continues_elsewhere(self) -> None:
        """The job goes on as later work items; whoever finishes the last one ends it."""
        self._outcome = "continues"

    # ---------------------------------------------------------------------------- context manager
    async def __aenter__(self) -> JobRun:
        before = await self.ctx.bus.jobs.get(self.job_id)
        if before is not None and before.state == "cancelled":
            self.cancelled, self._outcome = True, "continues"  # leave the board as it is
            return self
        await self.ctx.bus.jobs.update(
            self.job_id,
            self.kind,
            state="running",
            stage=self._stage,
            fraction=0.0,
            message=self._message,
            correlation_id=self.ctx.envelope.correlation_id,
        )
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        for reporter in self._reporters:  # before the final state: a late "running" must not win
            await reporter.flush()
        if exc is None:
            await self._write_outcome()
            if self._outcome == "succeeded" and self._event is not None:
                try:
                    await self.ctx.publish(self._event, event_id=self._event_id)
                except Exception as publish_error:  # nobody heard of the success: retried as any failure
                    await self._failed(publish_error)
                    raise
            return False
        if isinstance(exc, Refusal):
            from shared.bus.bus import JobRejected  # the bus imports this module

            rejected = exc if isinstance(exc, JobRejected) else None
            reason = str(exc) if rejected else f"{self.kind} job {self.job_id}: {exc}"
            await self._write_failed(f"rejected: {reason}")
            if rejected:
                return False
            raise JobRejected(reason) from exc
        if isinstance(exc, Exception):
            await self._failed(exc)
        return False

    async def _failed(self, exc: Exception) -> None:
        if self.ctx.attempt >= self.ctx.max_deliver:
            await self._write_failed(f"{type(exc).__name__}: {exc}")
        else:
            await self._note_failed_attempt(exc)

    async def _write_outcome(self) -> None:
        jobs = self.ctx.bus.jobs
        if self._outcome == "continues":
            return
        if self._outcome == "cancelled":
            await jobs.update(
                self.job_id, self.kind, state="cancelled", stage="cancelled", message=self._final_message
            )
            return
        await jobs.update(
            self.job_id,
            self.kind,
            state="succeeded",
            stage="done",
            fraction=1.0,
            message=self._final_message,
            result=self._result,
        )

    async def _write_failed(self, message: str) -> None:
        try:
            await self.ctx.bus.jobs.update(self.job_id, self.kind, state="failed", message=message[:500])
        except Exception:  # best effort: the dead letter still says why
            log.warning("could not mark %s failed", self.job_id, exc_info=True)

    async def _note_failed_attempt(self, exc: Exception) -> None:
        try:
            await self.ctx.bus.jobs.update(
                self.job_id,
                self.kind,
                message=f"attempt {self.ctx.attempt} failed, to be retried: {type(exc).__name__}: {exc}"[
                    :500
                ],
            )
        except Exception:  # the board is best effort here: the bus still retries or dead-letters
            log.debug("could not note the failed attempt of %s", self.job_id, exc_info=True)
