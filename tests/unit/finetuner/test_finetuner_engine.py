from __future__ import annotations

import importlib.util

import pytest
import torch
from pydantic import ValidationError

from contracts.events import FinetuneRequested, FinetuneSpec, ModelRef
from services.finetuner import grpc_api
from services.finetuner.core import UnsupportedRequest
from services.finetuner.core.engine import TorchEngine, build_engine, build_optimizer
from services.finetuner.core.validation import check_zero, resolve_device


def test_zero_stage_is_validated_and_refused_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match="zero_stage"):
        FinetuneSpec(zero_stage=4)
    check_zero(FinetuneSpec(zero_stage=0))  # plain torch needs nothing
    with pytest.raises(UnsupportedRequest, match="bitsandbytes 4-bit"):
        check_zero(FinetuneSpec(method="qlora", zero_stage=2))
    monkeypatch.setenv("WORLD_SIZE", "2")  # under a launcher ZeRO shards across the ranks: accepted
    check_zero(FinetuneSpec(zero_stage=1))
    request = FinetuneRequested(
        job_id="j", base=ModelRef(model_name="m", version=1), dataset_uri="d.jsonl", output_model_name="o"
    )
    grpc_api.check_request(request)  # zero_stage 0: nothing to refuse
    grpc_api.check_request(request.model_copy(update={"spec": FinetuneSpec(zero_stage=2)}))
    monkeypatch.delenv("WORLD_SIZE")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "deepspeed" else real(name))
    with pytest.raises(UnsupportedRequest, match="needs DeepSpeed"):
        check_zero(FinetuneSpec(zero_stage=3))


def test_plain_engine_uses_fused_adamw_and_steps() -> None:
    layer = torch.nn.Linear(4, 4)
    assert build_optimizer(list(layer.parameters()), FinetuneSpec()).defaults["fused"] is True
    spec = FinetuneSpec(max_steps=40, learning_rate=0.1)  # warm-up: 4 steps
    engine = build_engine(layer, spec, "cpu")
    assert type(engine) is TorchEngine and engine.forward is layer
    before = layer.weight.detach().clone()
    engine.step(layer(torch.ones(2, 4)).pow(2).sum())
    assert not torch.equal(before, layer.weight) and layer.weight.grad is None
    assert engine.scheduler.get_last_lr()[0] == pytest.approx(0.05)  # 2 of 4 warm-up steps


def test_ranks_take_the_gpu_of_their_local_rank_or_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert resolve_device("cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == "cuda:1" and resolve_device("cuda:0") == "cuda:0"
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(UnsupportedRequest, match="local rank 1 has no GPU: this node has 1"):
        resolve_device("cuda")
