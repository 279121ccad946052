"""Bus adapter: ``IngestRequested`` → run the core in a thread → dataset in the store → ``CorpusIngested``."""

from __future__ import annotations

import asyncio
import hashlib

from contracts.events import CorpusIngested, DatasetRef, IngestRequested, StageStats
from services.corpus_ingest.config import IngestSettings
from services.corpus_ingest.core import IngestInputError, run_ingest
from shared.artifacts import ArtifactStore
from shared.bus import Bus, HandlerContext, JobRejected

KIND = "ingest"


def dataset_id_for(payload: IngestRequested) -> str:
    # Derived from the job: a redelivered or rerun request overwrites the same dataset folder.
    return f"{payload.dataset_name}-{payload.job_id[:8]}"


def register_handlers(bus: Bus, settings: IngestSettings) -> None:
    @bus.handle(IngestRequested, ack_wait=60.0)
    async def on_ingest(ctx: HandlerContext[IngestRequested]) -> None:
        p = ctx.payload
        dataset_id = dataset_id_for(p)
        await bus.jobs.update(
            p.job_id,
            KIND,
            state="running",
            stage="ingest",
            fraction=0.0,
            correlation_id=ctx.envelope.correlation_id,
            message=f"ingesting {dataset_id}",
        )
        store = ArtifactStore(settings.artifact_root_uri)
        key = f"datasets/{dataset_id}"
        staging = store.local_staging(key)
        try:
            manifest = await asyncio.to_thread(
                run_ingest,
                p.sources,
                staging,
                dataset_id,
                p.options,
                settings.corpus_ingest_detector_languages,
                settings.corpus_ingest_txt_max_doc_bytes,
                ctx.progress_from_thread(p.job_id, KIND),
                settings.corpus_ingest_workers,
            )
        except IngestInputError as exc:
            raise JobRejected(str(exc)) from exc
        store.put_dir(staging, key)
        manifest_bytes = (staging / "manifest.json").read_bytes()
        dataset = DatasetRef(
            dataset_id=dataset_id,
            manifest_uri=store.uri(f"{key}/manifest.json"),
            digest=hashlib.sha256(manifest_bytes).hexdigest(),
        )
        stages = [StageStats(**s) for s in manifest["stages"]]
        await ctx.publish(
            CorpusIngested(
                job_id=p.job_id,
                dataset=dataset,
                documents=manifest["documents"],
                stages=stages,
                pipeline=p.pipeline,
            ),
            event_id=f"ingested:{p.job_id}",
        )
        await bus.jobs.update(
            p.job_id,
            KIND,
            state="succeeded",
            stage="done",
            fraction=1.0,
            message=f"{manifest['documents']} documents kept of {stages[0].docs_in}",
            result={
                "dataset": dataset.model_dump(),
                "documents": manifest["documents"],
                "token_estimate": manifest["token_estimate"],
                "file_errors": manifest["file_errors"],
            },
        )
