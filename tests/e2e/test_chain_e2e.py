"""The whole chain through the real services, each its own process, on a real nats-server:
an ingest request ends in a served completion. Midway the trainer is killed with SIGKILL; the stack
restarts it, the redelivered request resumes the run, and no step of the chain happens twice."""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from contracts.events import (
    CheckpointReady,
    DeploymentReady,
    EvaluationCompleted,
    IngestRequested,
    JobProgress,
    ModelArchitecture,
    ModelPromoted,
    ModelRegistered,
    PipelineSpec,
    TrainSpec,
)
from services.cli.chain import ChainWatcher
from services.cli.stack import Stack
from shared.bus import Bus
from shared.ports import SERVICES, gateway_base_url, http_port
from shared.samples import write_sample_corpus

# The chain trains a model: minutes on a loaded 2-core machine, hence its own timeout.
pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(1200)]

SMALL_TRAIN = TrainSpec(
    model_name="e2e-model",
    architecture=ModelArchitecture(
        hidden_size=128,
        intermediate_size=344,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=2048,
        max_position_embeddings=256,
    ),
    seq_len=128,
    micro_batch_size=8,
    max_steps=80,
    warmup_steps=10,
    checkpoint_interval=20,
)


@pytest.fixture
def stack(service_stack: Callable[..., Stack]) -> Stack:
    return service_stack(SERVICES)


async def _drive(stack: Stack, tmp_path: Path) -> ChainWatcher:
    settings = stack.settings
    # under HOME/data: one of the folders the services may read by default
    sources = [str(p) for p in write_sample_corpus(settings.home / "data" / "corpus", n_articles=400)]
    correlation = uuid.uuid4().hex
    bus = Bus(settings.nats_url, "e2e-test")
    await bus.start()
    killed = False
    async with ChainWatcher(settings.nats_url, correlation) as watcher:
        await bus.publish(
            IngestRequested(
                job_id=f"e2e-{correlation[:8]}",
                dataset_name="e2e",
                sources=sources,
                pipeline=PipelineSpec(train=SMALL_TRAIN),
            ),
            correlation=correlation,
        )
        # Kill the trainer once it has made progress; the stack restarts it.
        deadline = asyncio.get_running_loop().time() + 900
        while not killed:
            assert asyncio.get_running_loop().time() < deadline, "training never started"
            progress = [
                e
                for e in watcher.events
                if e.type == JobProgress.event_type
                and e.payload.get("job_kind", "").startswith("train")
                and e.payload["fraction"] > 0.3
            ]
            if progress or watcher.find(CheckpointReady.event_type):
                await asyncio.to_thread(stack.kill, "trainer", signal.SIGKILL)
                killed = True
            await asyncio.sleep(0.2)
        await watcher.wait_for(DeploymentReady.event_type, timeout=900)
        await asyncio.sleep(2)  # let any duplicate that would have been emitted arrive
    await bus.stop()
    return watcher


def test_ingest_request_ends_in_a_served_completion(stack: Stack, tmp_path: Path) -> None:
    watcher = asyncio.run(_drive(stack, tmp_path))
    types = [e.type for e in watcher.events if e.type != JobProgress.event_type]

    finals = [e for e in watcher.events if e.type == CheckpointReady.event_type and e.payload["final"]]
    assert len(finals) == 1, types
    # The registry registers each final checkpoint once, however often the trainer ran.
    assert types.count(ModelRegistered.event_type) == 1, types
    assert types.count(EvaluationCompleted.event_type) >= 1
    assert types.count(ModelPromoted.event_type) >= 1
    assert stack.restarts["trainer"] >= 1

    deployed = watcher.find(DeploymentReady.event_type)
    assert deployed is not None
    served = deployed.payload["served_name"]
    resp = httpx.post(
        f"{gateway_base_url(stack.settings)}/v1/completions",
        json={"model": served, "prompt": "The capital of", "max_tokens": 8, "temperature": 0},
        timeout=120,
        headers=stack.client_auth().headers(),
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["choices"][0]["text"].strip(), body
    assert body["usage"]["completion_tokens"] > 0

    # A bad request gets a clear error and the gateway keeps serving.
    bad = httpx.post(
        f"{gateway_base_url(stack.settings)}/v1/completions",
        json={"model": "no-such-model", "prompt": "x"},
        timeout=30,
        headers=stack.client_auth().headers(),
    )
    assert bad.status_code == 404 and "no-such-model" in bad.text
    health = httpx.get(
        f"http://{stack.settings.host}:{http_port('inference_gateway', stack.settings)}/health"
    )
    assert health.status_code == 200
    # Closed to anyone without a token of the stack; health stays open.
    anonymous = httpx.post(
        f"{gateway_base_url(stack.settings)}/v1/completions",
        json={"model": served, "prompt": "x"},
        timeout=30,
    )
    assert anonymous.status_code == 401
