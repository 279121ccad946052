"""Bus adapter: a deduplicated corpus becomes searchable (``corpus.deduplicated`` → index the dataset)."""

from __future__ import annotations

import asyncio
import logging

from contracts.events import CorpusDeduplicated
from services.agent_runtime.corpus import CorpusError, CorpusIndex
from services.agent_runtime.index_state import IndexedDataset, IndexState
from shared.bus import Bus, HandlerContext, JobRejected

log = logging.getLogger(__name__)


def register_handlers(bus: Bus, index: CorpusIndex, state: IndexState | None) -> None:
    @bus.handle(CorpusDeduplicated, ack_wait=60.0)
    async def on_corpus_deduplicated(ctx: HandlerContext[CorpusDeduplicated]) -> None:
        dataset = ctx.payload.dataset
        try:
            # reading shards and building BM25 is CPU work: off the event loop
            docs = await asyncio.to_thread(index.add_manifest, dataset.dataset_id, dataset.manifest_uri)
        except CorpusError as exc:
            raise JobRejected(f"cannot index dataset {dataset.dataset_id}: {exc}") from exc
        if state is not None:
            await asyncio.to_thread(state.record, IndexedDataset(dataset.dataset_id, dataset.manifest_uri))
        log.info(
            "indexed dataset %s: %d documents, %d passages", dataset.dataset_id, docs, index.num_passages
        )
