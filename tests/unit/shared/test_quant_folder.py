"""``quantize_folder`` end to end on a tiny folder, its refusals before any weight is read, and the
refusals of a corrupt or mismatched quantised folder at load time (each naming the problem)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from services.inference_gateway.core.engine import Engine
from shared.errors import Refusal
from shared.hf_models import load_causal_lm
from shared.quantization import (
    CalibrationTooSmall,
    GroupSizeMismatch,
    InvalidCalibration,
    QuantizationRefusal,
    QuantLinear,
    QuantSpec,
    UnsupportedArchitecture,
    UnsupportedCheckpoint,
    prepare_for_serving,
    quantize_folder,
    save_quantized,
)
from shared.quantization import folder as folder_module
from tests.support.model_references import build_native

RTN = QuantSpec(method="rtn", bits=4, group_size=32)
AWQ = QuantSpec(
    method="awq", bits=4, group_size=32, min_calibration_tokens=256, awq_grid=4
)  # a short search: fast


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_native(tmp_path_factory.mktemp("source") / "llama", "llama")


@pytest.fixture(scope="module")
def quantised(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return quantize_folder(source, tmp_path_factory.mktemp("q") / "rtn", RTN).out_dir


@pytest.fixture
def no_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if the model's weights are loaded before the refusal."""

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the weights were read before refusing")

    monkeypatch.setattr(folder_module, "load_causal_lm", refuse)


def test_quantize_folder_reports_what_it_wrote(source: Path, tmp_path: Path) -> None:
    stages: list[tuple[str, float]] = []
    texts = [f"the quick brown fox {i} jumps over the lazy dog near the river bank" * 4 for i in range(12)]
    report = quantize_folder(
        source,
        tmp_path / "out",
        AWQ,
        texts,
        lambda stage, fraction, message, **_: stages.append((stage, fraction)),
        max_sequence_tokens=40,
    )
    assert report.out_dir == tmp_path / "out" and (report.out_dir / "tokenizer.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no partial folder left beside it
    assert report.layout == "awq-gemm" and report.quantization_config["quant_method"] == "awq"
    assert len(report.layers) == 14 and report.layers[0] == "model.layers.0.self_attn.q_proj"
    assert report.calibration_tokens >= 256 and all(
        n <= 40 for n in [report.calibration_tokens // report.calibration_sequences]
    )
    on_disk = sum(f.stat().st_size for f in report.out_dir.glob("*.safetensors"))
    assert report.quantized_bytes == on_disk < report.source_bytes
    assert report.compression == report.source_bytes / on_disk
    assert ("load", 0.0) in stages and ("quantize", 1.0) in stages and stages[-1] == ("save", 1.0)
    assert json.loads(json.dumps(report.to_dict()))["out_dir"] == str(tmp_path / "out")


def test_calibration_windows_and_budget(source: Path, tmp_path: Path) -> None:
    rows = [list(range(3, 300))] * 4  # 297 tokens each
    report = quantize_folder(
        source, tmp_path / "out", AWQ, rows, max_sequence_tokens=100, max_calibration_tokens=500
    )
    assert report.calibration_tokens == 500 and report.calibration_sequences == 6  # 100,100,97,100,100,3


@pytest.mark.usefixtures("no_weights")
def test_a_group_size_that_does_not_divide_is_refused_before_loading(source: Path, tmp_path: Path) -> None:
    with pytest.raises(GroupSizeMismatch, match=r"group size 48 does not divide .* input dimension 64"):
        quantize_folder(source, tmp_path / "out", QuantSpec(method="rtn", group_size=48))


@pytest.mark.usefixtures("no_weights")
def test_a_calibration_set_too_small_is_refused_before_loading(source: Path, tmp_path: Path) -> None:
    with pytest.raises(CalibrationTooSmall, match="at least 256 calibration tokens; got 30"):
        quantize_folder(source, tmp_path / "out", AWQ, [list(range(3, 33))])
    with pytest.raises(InvalidCalibration, match="outside the vocabulary"):
        quantize_folder(source, tmp_path / "out", AWQ, [[10**6] * 300])
    with pytest.raises(InvalidCalibration, match="mixes texts and token-id"):
        quantize_folder(source, tmp_path / "out", AWQ, ["some text", [1, 2, 3]])  # type: ignore[list-item]


@pytest.mark.usefixtures("no_weights")
def test_folders_that_cannot_be_quantised_are_refused_by_name(
    source: Path, quantised: Path, tmp_path: Path
) -> None:
    with pytest.raises(UnsupportedArchitecture, match="quantised already"):
        quantize_folder(quantised, tmp_path / "out", RTN)
    moe = tmp_path / "moe"
    moe.mkdir()
    (moe / "config.json").write_text(json.dumps({"model_type": "mixtral"}), encoding="utf-8")
    with pytest.raises(UnsupportedArchitecture, match="'mixtral' cannot be quantised"):
        quantize_folder(moe, tmp_path / "out", RTN)
    (moe / "config.json").write_text(json.dumps({"model_type": "gpt2"}), encoding="utf-8")
    with pytest.raises(Refusal, match="'gpt2' is not supported"):
        quantize_folder(moe, tmp_path / "out", RTN)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("x")
    with pytest.raises(QuantizationRefusal, match="exists and is not empty"):
        quantize_folder(source, tmp_path / "taken", RTN)


def corrupt(quantised: Path, tmp_path: Path, edit) -> Path:
    """A copy of ``quantised`` whose tensors (dict) or config (dict) ``edit`` changes in place."""
    folder = tmp_path / "corrupt"
    folder.mkdir()
    for file in quantised.iterdir():
        (folder / file.name).write_bytes(file.read_bytes())
    tensors = load_file(folder / "model.safetensors")
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    edit(tensors, config)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


LAYER = "model.layers.1.mlp.down_proj"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t, c: t.pop(f"{LAYER}.qzeros"), f"{LAYER} lacks qzeros"),
        (
            lambda t, c: t.update({f"{LAYER}.qweight": t[f"{LAYER}.qweight"].float()}),
            "float32, the layout stores int32",
        ),
        (
            lambda t, c: t.update({f"{LAYER}.qweight": t[f"{LAYER}.qweight"][:-1]}),
            f"{LAYER}.qweight has shape",
        ),
        (lambda t, c: c["quantization_config"].update(bits=8), r"qweight has shape .* make it"),
        (lambda t, c: c["quantization_config"].update(group_size=64), r"\.(qzeros|scales) has shape"),
        (lambda t, c: c.update(hidden_size=128), "has shape"),
        (lambda t, c: c.update(model_type="mixtral"), "'mixtral' is not read quantised"),
        (lambda t, c: c["quantization_config"].update(quant_method="awq"), "has shape"),
    ],
    ids=["missing", "dtype", "truncated-tensor", "bits", "group-size", "config-dims", "family", "layout"],
)
def test_a_mismatched_folder_is_refused_at_load(quantised: Path, tmp_path: Path, edit, message: str) -> None:
    folder = corrupt(quantised, tmp_path, edit)
    with pytest.raises(Refusal, match=message):
        load_causal_lm(folder, dtype="float32")


def test_a_truncated_weight_file_is_refused_and_the_engine_says_so(quantised: Path, tmp_path: Path) -> None:
    folder = corrupt(quantised, tmp_path, lambda t, c: None)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(UnsupportedCheckpoint, match="cannot read its quantised weights"):
        load_causal_lm(folder)
    with pytest.raises(Refusal, match="cannot read its quantised weights"):
        Engine.load(folder, device="cpu")


def test_a_loaded_quantised_model_saves_back_the_same_folder(quantised: Path, tmp_path: Path) -> None:
    """``save_in_format`` (what the finetuner and trainer call) writes a quantised model as such."""
    from shared.hf_models import save_in_format

    model, fmt = load_causal_lm(quantised, dtype="float32")
    save_in_format(model, None, tmp_path / "again", fmt)
    before, after = (
        load_file(quantised / "model.safetensors"),
        load_file(tmp_path / "again" / "model.safetensors"),
    )
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before if not before[k].is_floating_point())


def test_serving_frees_the_packed_copy_and_computes_the_same(quantised: Path, tmp_path: Path) -> None:
    model, _ = load_causal_lm(quantised, dtype="float32")
    layers = [m for m in model.modules() if isinstance(m, QuantLinear)]
    packed = sum(t.numel() * t.element_size() for m in layers for t in m.buffers() if t.dtype == torch.int32)
    ids = torch.tensor([[5, 9, 13, 21, 8, 40]])
    with torch.no_grad():
        before = model(ids).logits
        freed = prepare_for_serving(model, torch.float32)
        after = model(ids).logits
    assert freed >= packed and all(m.released for m in layers)
    assert torch.equal(before, after)
    with pytest.raises(UnsupportedCheckpoint, match="freed for serving"):
        save_quantized(model, tmp_path / "again")
