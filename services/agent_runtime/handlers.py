"""Bus adapter: a deduplicated corpus becomes searchable (``corpus.deduplicated`` → index the dataset).

The event's job belongs to the dedup service (already finished): indexing is this service's own side
effect, not a job on the board. A dataset that cannot be read is refused (``CorpusError``), which the
bus dead-letters without retries.
"""

from __future__ import annotations

import asyncio

from contracts.events import CorpusDeduplicated
from services.agent_runtime.config import AgentRuntimeSettings
from services.agent_runtime.core import AgentRuntime
from shared.bus import Bus, HandlerContext


def register_handlers(bus: Bus, core: AgentRuntime, settings: AgentRuntimeSettings) -> None:
    @bus.handle(CorpusDeduplicated, ack_wait=60.0)
    async def on_corpus_deduplicated(ctx: HandlerContext[CorpusDeduplicated]) -> None:
        dataset = ctx.payload.dataset
        # reading shards and building BM25 is CPU work: off the event loop
        await asyncio.to_thread(core.index_dataset, dataset.dataset_id, dataset.manifest_uri)
