"""quantize.requested on a registered model ends in a new registered version whose lineage names its
parent and the method, evaluated, and decided by the gate against the parent: through the real
finetuner, registry and evaluator processes on a real nats-server, jobs submitted over the
finetuner's authenticated gRPC Jobs API.

The model is a tiny Llama with wide logits (initializer_range 0.2), the policy allows a quantised
version 1% more perplexity than its parent. Measured on this model: int8 round-to-nearest (group 32)
moves perplexity by about 0.01%, 4-bit round-to-nearest with one scale per row by about 2.5%. So
the int8 version replaces its parent as champion and the crude 4-bit one is rejected, naming the gate;
nothing about the outcome is scripted, it follows from the evaluator's numbers.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from contracts.events import CheckpointReady, ModelRef, QuantizeRequested, QuantizeSpec
from contracts.proto.puyu.jobs.v1 import jobs_pb2, jobs_pb2_grpc
from services.cli.stack import Stack
from shared.artifacts import ArtifactStore
from shared.bus import Bus
from shared.ports import grpc_port, http_port
from shared.samples import heldout_texts
from tests.support.tiny_model import build_tiny_model

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1200)]

POLICY = {
    "gates": {"perplexity": {"tolerance": 0.02}},
    "quantized": {"gates": {"perplexity": {"tolerance": 0.01, "required": True}}},
}


async def _register_parent(stack: Stack, folder: Path, store: ArtifactStore) -> None:
    # a final checkpoint is the trainer's fact to publish: the test speaks as the trainer
    bus = Bus(stack.settings.nats_url, "trainer", identity=stack.identity("trainer"))
    await bus.start()
    try:
        await bus.publish(
            CheckpointReady(
                job_id="train-1",
                run_id="run-1",
                model_name="tiny",
                step=1,
                checkpoint=store.ref_for(folder.as_uri()),
            )
        )
    finally:
        await bus.stop()


def _decided(stack: Stack, version: int, timeout: float = 600) -> dict[str, Any]:
    registry = f"http://{stack.settings.host}:{http_port('model_registry', stack.settings)}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = httpx.get(
            f"{registry}/v1/models/tiny/versions/{version}", timeout=30, headers=stack.client_auth().headers()
        )
        if response.status_code == 200:
            shown: dict[str, Any] = response.json()
            if shown["evaluations"] and shown["status"] in ("champion", "rejected"):
                return shown
        time.sleep(0.5)
    raise TimeoutError(f"tiny:{version} not decided in {timeout}s")


def _registry_get(stack: Stack, path: str) -> Any:
    registry = f"http://{stack.settings.host}:{http_port('model_registry', stack.settings)}"
    response = httpx.get(f"{registry}/v1{path}", timeout=30, headers=stack.client_auth().headers())
    response.raise_for_status()
    return response.json() if "json" in response.headers.get("content-type", "") else response.text


async def _submit(stack: Stack, request: QuantizeRequested) -> tuple[str, str]:
    """Submit over gRPC Jobs as the stack's admin; (final state, message) once the job ends."""
    target = f"{stack.settings.host}:{grpc_port('finetuner', stack.settings)}"
    async with stack.client_auth().channel(target) as channel:
        jobs = jobs_pb2_grpc.JobsStub(channel)
        status = await jobs.Submit(
            jobs_pb2.SubmitJobRequest(kind="quantize", spec_json=request.model_dump_json())
        )
        assert status.state == "queued" and status.job_id == request.job_id
        states = [s async for s in jobs.Watch(jobs_pb2.GetJobRequest(job_id=request.job_id), timeout=600)]
    return states[-1].state, states[-1].message


async def _refused_at_submit(stack: Stack) -> None:
    target = f"{stack.settings.host}:{grpc_port('finetuner', stack.settings)}"
    awq_without_data = QuantizeRequested(job_id="q-bad", base=ModelRef(model_name="tiny", version=1))
    async with grpc.aio.insecure_channel(target) as anonymous:  # no token: refused before anything
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await jobs_pb2_grpc.JobsStub(anonymous).Submit(
                jobs_pb2.SubmitJobRequest(kind="quantize", spec_json=awq_without_data.model_dump_json())
            )
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    async with stack.client_auth().channel(target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await jobs_pb2_grpc.JobsStub(channel).Submit(
                jobs_pb2.SubmitJobRequest(kind="quantize", spec_json=awq_without_data.model_dump_json())
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "awq needs calibration text" in str(err.value.details())


def test_a_quantised_version_is_registered_evaluated_and_gated_against_its_parent(
    service_stack: Callable[..., Stack],
) -> None:
    stack = service_stack(
        ("finetuner", "model_registry", "evaluator"),
        PUYU_REGISTRY_POLICY=json.dumps(POLICY),
        PUYU_EVALUATOR_REGISTRATION_TASKS=json.dumps(["perplexity"]),
        PUYU_EVALUATOR_LIMIT="32",
        PUYU_EVALUATOR_DTYPE="float32",
    )
    store = ArtifactStore(stack.settings.artifact_root_uri)
    parent = build_tiny_model(
        store.local_staging("models/tiny/1"),
        heldout_texts(200, seed=1),
        vocab_size=400,
        initializer_range=0.2,
    )
    asyncio.run(_register_parent(stack, parent, store))
    assert _decided(stack, 1)["status"] == "champion"
    asyncio.run(_refused_at_submit(stack))

    # the parent must exist: a version the registry does not know is refused, without retries
    ghost = QuantizeRequested(
        job_id="q-ghost", base=ModelRef(model_name="tiny", version=9), spec=QuantizeSpec(method="rtn", bits=8)
    )
    state, message = asyncio.run(_submit(stack, ghost))
    assert state == "failed" and "unknown model tiny version 9" in message

    # crude: 4 bits, one scale per output row. Registered as version 2, rejected against its parent
    crude = QuantizeRequested(
        job_id="q-crude",
        base=ModelRef(model_name="tiny", version=1),  # its artifact resolved through the registry
        spec=QuantizeSpec(method="rtn", bits=4, group_size=-1),
    )
    assert asyncio.run(_submit(stack, crude))[0] == "succeeded"
    rejected = _decided(stack, 2)
    assert rejected["status"] == "rejected"
    assert rejected["kind"] == "quantize" and rejected["method"] == "rtn"
    assert rejected["parent"] == {"model_name": "tiny", "version": 1}
    assert rejected["quantization"]["bits"] == 4 and rejected["quantization"]["group_size"] == -1
    reasons = " | ".join(e["reason"] for e in _registry_get(stack, "/audit?model=tiny") if e["version"] == 2)
    assert "rejected against parent tiny:1" in reasons and "worse than limit" in reasons, reasons

    # int8, group 32: within 1% of the parent's perplexity, so it replaces the parent as champion
    int8 = QuantizeRequested(
        job_id="q-int8",
        base=ModelRef(model_name="tiny", version=1),
        spec=QuantizeSpec(method="rtn", bits=8, group_size=32),
    )
    assert asyncio.run(_submit(stack, int8))[0] == "succeeded"
    promoted = _decided(stack, 3)
    assert promoted["status"] == "champion", promoted
    assert promoted["quantization"] == {
        "method": "rtn",
        "bits": 8,
        "group_size": 32,
        "sym": False,
        "desc_act": False,
        "quant_method": "gptq",
        "calibration_uri": None,
        "calibration_tokens": 0,
    }
    shown = {v: _registry_get(stack, f"/models/tiny/versions/{v}") for v in (1, 2, 3)}
    ppl = {v: shown[v]["evaluations"][0]["metrics"]["perplexity"] for v in shown}
    assert abs(ppl[3] / ppl[1] - 1) < 0.01 < ppl[2] / ppl[1] - 1, ppl
    assert shown[1]["status"] == "archived"  # replaced by its quantised version
    card = _registry_get(stack, "/models/tiny/versions/3/card")
    assert "base_model: tiny:1" in card and "base_model_relation: quantized" in card
    assert "RTN 8-bit weights, group size 32" in card
    # what the registry serves is the quantised folder the finetuner wrote, digest and all
    artifact = promoted["artifact"]
    assert (
        artifact["uri"].endswith("runs/qz-q-int8/model")
        and store.ref_for(artifact["uri"]).sha256 == artifact["sha256"]
    )
    config = json.loads((store.fetch(artifact["uri"]) / "config.json").read_text())
    assert config["quantization_config"]["bits"] == 8
