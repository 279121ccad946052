"""Bus adapter: ``IngestRequested`` → the core in a thread → ``CorpusIngested``."""

from __future__ import annotations

import asyncio

from contracts.events import CorpusIngested, IngestRequested, StageStats
from services.corpus_ingest.config import IngestSettings
from services.corpus_ingest.core import Ingestor
from shared.bus import Bus, HandlerContext

KIND = "ingest"


def register_handlers(bus: Bus, core: Ingestor, settings: IngestSettings) -> None:
    @bus.handle(IngestRequested, ack_wait=60.0)
    async def on_ingest(ctx: HandlerContext[IngestRequested]) -> None:
        p = ctx.payload
        dataset_id = core.dataset_id(p.dataset_name, p.job_id)
        async with ctx.job(p.job_id, KIND, stage="ingest", message=f"ingesting {dataset_id}") as job:
            out = await asyncio.to_thread(
                core.ingest, dataset_id, p.sources, p.options, job.thread_progress()
            )
            m = out.manifest
            stages = [StageStats(**s) for s in m["stages"]]
            job.succeed(
                f"{m['documents']} documents kept of {stages[0].docs_in}",
                result={
                    "dataset": out.dataset.model_dump(),
                    "documents": m["documents"],
                    "token_estimate": m["token_estimate"],
                    "file_errors": m["file_errors"],
                },
                event=CorpusIngested(
                    job_id=p.job_id,
                    dataset=out.dataset,
                    documents=m["documents"],
                    stages=stages,
                    pipeline=p.pipeline,
                ),
                event_id=f"ingested:{p.job_id}",
            )
