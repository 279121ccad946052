"""Bad requests are refused before any compute, each with its own ``Refusal`` subclass."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, MixtralConfig, MixtralForCausalLM

from shared.errors import Refusal
from shared.quantization import (
    CalibrationTooSmall,
    GroupSizeMismatch,
    InvalidCalibration,
    InvalidQuantSpec,
    QuantSpec,
    UnsupportedArchitecture,
    UnsupportedCheckpoint,
    UnsupportedLayer,
    check_request,
    quantize_model,
    read_quantized_format,
)
from shared.quantization import quantize as quantize_module

TINY = {
    "vocab_size": 64,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
}
ENOUGH = [list(range(64))] * 4


@pytest.fixture
def no_compute(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if calibration inputs are ever computed."""

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("computed before refusing")

    monkeypatch.setattr(quantize_module, "first_layer_inputs", refuse)


def llama(**overrides: int) -> LlamaForCausalLM:
    return LlamaForCausalLM(LlamaConfig(**{**TINY, **overrides})).eval()


@pytest.mark.usefixtures("no_compute")
def test_unsupported_architecture() -> None:
    model = MixtralForCausalLM(MixtralConfig(**TINY, num_local_experts=2, num_experts_per_tok=1))
    with pytest.raises(UnsupportedArchitecture, match="mixtral"):
        quantize_model(model, QuantSpec(method="awq", group_size=32), ENOUGH)


@pytest.mark.usefixtures("no_compute")
def test_unsupported_layer() -> None:
    model = llama()
    model.model.layers[0].mlp.down_proj = torch.nn.Sequential(torch.nn.Linear(128, 64))
    with pytest.raises(UnsupportedLayer, match=r"model\.layers\.0\.mlp\.down_proj"):
        quantize_model(model, QuantSpec(method="gptq", group_size=32), ENOUGH)


@pytest.mark.usefixtures("no_compute")
@pytest.mark.parametrize("method", ["awq", "gptq"])
def test_calibration_too_small(method: str) -> None:
    with pytest.raises(CalibrationTooSmall, match="at least 256 calibration tokens; got 100"):
        quantize_model(llama(), QuantSpec(method=method, group_size=32), [list(range(50))] * 2)  # type: ignore[arg-type]
    with pytest.raises(InvalidCalibration, match="outside the vocabulary"):
        quantize_model(llama(), QuantSpec(method=method, group_size=32), [*ENOUGH, [1, 64]])  # type: ignore[arg-type]


def test_rtn_needs_no_calibration() -> None:
    check_request(llama(), QuantSpec(method="rtn", group_size=32), [])


@pytest.mark.usefixtures("no_compute")
@pytest.mark.parametrize("method", ["rtn", "awq", "gptq"])
def test_group_size_must_divide_every_input_dimension(method: str) -> None:
    with pytest.raises(GroupSizeMismatch, match=r"group size 48 does not divide .*input dimension 64"):
        quantize_model(llama(), QuantSpec(method=method, group_size=48), ENOUGH)  # type: ignore[arg-type]
    with pytest.raises(GroupSizeMismatch, match="output dimension 36"):
        check_request(llama(intermediate_size=36), QuantSpec(method=method, group_size=4), ENOUGH)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"method": "fp8"}, "method 'fp8'"),
        ({"method": "rtn", "bits": 3}, "3-bit"),
        ({"method": "awq", "sym": True}, "sym applies to gptq only"),
        ({"method": "rtn", "desc_act": True}, "desc_act"),
        ({"method": "awq", "group_size": -1}, "positive group size"),
        ({"method": "gptq", "group_size": 0}, "group size 0"),
    ],
)
def test_invalid_spec(options: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidQuantSpec, match=message):
        QuantSpec(**options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("quantization_config", "message"),
    [
        ({"quant_method": "awq", "bits": 4, "group_size": 128, "version": "gemv"}, "version 'gemv'"),
        ({"quant_method": "gptq", "bits": 3, "group_size": 128}, "3 bits"),
        ({"quant_method": "gptq", "bits": 4, "group_size": 128, "checkpoint_format": "marlin"}, "'marlin'"),
        ({"quant_method": "bitsandbytes"}, "bitsandbytes"),
    ],
)
def test_unread_checkpoint_layouts(
    quantization_config: dict[str, object], message: str, tmp_path: Path
) -> None:
    config = {"model_type": "llama", "quantization_config": quantization_config}
    (tmp_path / "config.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(UnsupportedCheckpoint, match=message) as refused:
        read_quantized_format(tmp_path)
    assert isinstance(refused.value, Refusal)
