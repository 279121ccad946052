"""A finetune request on the bus ends in an evaluated registry version, through the real finetuner,
registry and evaluator processes on a real nats-server."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from contracts.events import (
    CheckpointReady,
    EvaluationCompleted,
    FinetuneRequested,
    FinetuneSpec,
    ModelRef,
    ModelRegistered,
)
from services.cli.chain import ChainWatcher
from services.cli.stack import Stack
from shared.artifacts import ArtifactStore
from shared.bus import Bus
from shared.ports import http_port
from shared.samples import CHAT_TEMPLATE, chat_examples, heldout_texts
from tests.support.data import write_chat_dataset
from tests.support.tiny_model import build_tiny_model

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]


async def _finetune(stack: Stack, base: Path, data: Path, store: ArtifactStore) -> ChainWatcher:
    correlation = uuid.uuid4().hex
    bus = Bus(stack.settings.nats_url, "finetune-chain-test")
    await bus.start()
    try:
        async with ChainWatcher(stack.settings.nats_url, correlation) as watcher:
            request = FinetuneRequested(
                job_id=f"ft-{correlation[:8]}",
                base=ModelRef(model_name="tiny-base", version=1),
                base_artifact=store.ref_for(base.as_uri()),
                dataset_uri=data.as_uri(),
                output_model_name="tiny-chat",
                spec=FinetuneSpec(max_steps=8, micro_batch_size=4, seq_len=128),
            )
            await bus.publish(request, correlation=correlation)
            await watcher.wait_for(EvaluationCompleted.event_type, timeout=600)
            return watcher
    finally:
        await bus.stop()


def test_finetune_request_ends_in_an_evaluated_registry_version(
    service_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    stack = service_stack(("finetuner", "model_registry", "evaluator"))
    store = ArtifactStore(stack.settings.artifact_root_uri)
    texts = [*heldout_texts(120), *(str(m["content"]) for r in chat_examples(40) for m in r["messages"])]  # type: ignore[attr-defined]
    base = build_tiny_model(
        store.local_staging("models/tiny-base/1"),
        texts,
        chat_template=CHAT_TEMPLATE,
        unk_token="<unk>",
        max_positions=512,
    )
    data = write_chat_dataset(stack.settings.home / "data" / "chat.jsonl", n=40)  # a read root

    watcher = asyncio.run(_finetune(stack, base, data, store))

    checkpoint = watcher.find(CheckpointReady.event_type)
    registered = watcher.find(ModelRegistered.event_type)
    evaluated = watcher.find(EvaluationCompleted.event_type)
    assert checkpoint and registered and evaluated
    assert checkpoint.payload["kind_of_run"] == "finetune" and checkpoint.payload["method"] == "lora"
    version = registered.payload["model"]
    assert version["model_name"] == "tiny-chat" and evaluated.payload["model"] == version

    registry = f"http://{stack.settings.host}:{http_port('model_registry', stack.settings)}"
    url = f"{registry}/v1/models/tiny-chat/versions/{version['version']}"
    # The registry consumes evaluation.completed concurrently with this watcher: wait until it has
    # recorded the results and the gate has decided.
    deadline = time.monotonic() + 30
    while True:
        shown = httpx.get(url, timeout=30, headers=stack.client_auth().headers()).json()
        if (
            shown["evaluations"] and shown["status"] in ("champion", "rejected")
        ) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert shown["kind"] == "finetune" and shown["method"] == "lora"
    assert shown["parent"] == {"model_name": "tiny-base", "version": 1}
    assert shown["artifact"]["uri"] == checkpoint.payload["checkpoint"]["uri"]
    assert {e["task"] for e in shown["evaluations"]} == {r["task"] for r in evaluated.payload["results"]}
    assert shown["status"] in ("champion", "rejected")  # the gate decided, either way with a reason
