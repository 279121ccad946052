"""The finetuner's quantisation core: every bad request refused before any compute, naming the
problem; calibration read from a puyu dataset or a text file; the output a quantised folder whose
logits follow the unquantised model's (transformers' class on the original weights)."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from contracts.events import ArtifactRef, ModelRef, QuantizeSpec
from services.finetuner.core import InvalidInput, Quantizer, run_quantize
from services.finetuner.core.calibration import calibration_windows
from shared.artifacts import ArtifactStore, DigestMismatch
from shared.hf_models import UnsupportedModel, load_causal_lm
from shared.quantization import (
    CalibrationTooSmall,
    GroupSizeMismatch,
    InvalidCalibration,
    InvalidQuantSpec,
    QuantLinear,
    UnsupportedArchitecture,
)
from shared.read_roots import OutsideReadRoots, ReadRoots
from shared.samples import heldout_texts

AWQ = QuantizeSpec(method="awq", bits=4, group_size=32, calibration_samples=4, calibration_seq_len=64)


@pytest.fixture(scope="module")
def calib_txt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("calib") / "calib.txt"
    path.write_text("\n".join(heldout_texts(60, seed=3)) + "\n", encoding="utf-8")
    return path


def _dataset(folder: Path, texts: list[str]) -> Path:
    """A dataset as corpus-ingest and dedup write it: gzip JSON-lines shards and a manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    with gzip.open(folder / "shard-00000.jsonl.gz", "wt", encoding="utf-8") as f:
        for n, text in enumerate(texts):
            f.write(json.dumps({"id": f"d{n}", "text": text}) + "\n")
    manifest = {"dataset_id": "calib", "documents": len(texts), "shards": [{"path": "shard-00000.jsonl.gz"}]}
    (folder / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return folder


def _config_only(folder: Path, **config: object) -> Path:
    """A folder with nothing but config.json: any refusal from it comes before a weight is read."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


LLAMA = {
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "num_hidden_layers": 2,
    "vocab_size": 300,
}


def test_an_architecture_the_methods_do_not_walk_is_refused(tmp_path: Path, calib_txt: Path) -> None:
    moe = _config_only(tmp_path / "moe", **{**LLAMA, "model_type": "mixtral", "num_local_experts": 4})
    with pytest.raises(UnsupportedArchitecture, match="'mixtral' cannot be quantised; supported: llama"):
        run_quantize(moe, tmp_path / "out", AWQ, calib_txt)
    gpt2 = _config_only(tmp_path / "gpt2", model_type="gpt2")
    with pytest.raises(UnsupportedModel, match="'gpt2' is not supported"):
        run_quantize(gpt2, tmp_path / "out", AWQ, calib_txt)
    done = _config_only(tmp_path / "done", **LLAMA, quantization_config={"quant_method": "awq", "bits": 4})
    with pytest.raises(UnsupportedArchitecture, match="quantised already"):
        run_quantize(done, tmp_path / "out", AWQ, calib_txt)
    assert not (tmp_path / "out").exists()


def test_a_group_size_that_does_not_divide_is_refused_from_the_config(
    tmp_path: Path, calib_txt: Path
) -> None:
    folder = _config_only(tmp_path / "m", **LLAMA)
    spec = AWQ.model_copy(update={"group_size": 48})
    with pytest.raises(
        GroupSizeMismatch, match=r"group size 48 does not divide .*q_proj's input dimension 64"
    ):
        run_quantize(folder, tmp_path / "out", spec, calib_txt)


def test_contradictory_specs_and_missing_calibration_are_refused(tmp_path: Path) -> None:
    folder = _config_only(tmp_path / "m", **LLAMA)
    with pytest.raises(InvalidQuantSpec, match="sym applies to gptq only"):
        run_quantize(folder, tmp_path / "out", AWQ.model_copy(update={"sym": True}), "x.txt")
    with pytest.raises(InvalidQuantSpec, match="group size 0 must be positive"):
        run_quantize(folder, tmp_path / "out", AWQ.model_copy(update={"group_size": 0}), "x.txt")
    with pytest.raises(InvalidCalibration, match="awq needs calibration text"):
        run_quantize(folder, tmp_path / "out", AWQ, None)
    with pytest.raises(InvalidCalibration, match="exceeds the limit"):
        big = AWQ.model_copy(update={"calibration_samples": 1024, "calibration_seq_len": 4096})
        run_quantize(folder, tmp_path / "out", big, "x.txt")


def test_a_calibration_set_too_small_is_refused_before_the_model_loads(
    tiny_base: Path, tmp_path: Path
) -> None:
    few = tmp_path / "few.txt"
    few.write_text("the river runs north\n", encoding="utf-8")
    with pytest.raises(CalibrationTooSmall, match="awq needs at least 256 calibration tokens; got"):
        run_quantize(tiny_base, tmp_path / "out", AWQ, few)
    with pytest.raises(InvalidInput, match="holds no text"):
        empty = tmp_path / "empty.txt"
        empty.write_text("\n\n", encoding="utf-8")
        run_quantize(tiny_base, tmp_path / "out", AWQ, empty)
    with pytest.raises(InvalidInput, match="calibration file not found"):
        run_quantize(tiny_base, tmp_path / "out", AWQ, tmp_path / "missing.txt")
    with pytest.raises(InvalidInput, match="not a puyu dataset"):
        run_quantize(tiny_base, tmp_path / "out", AWQ, tmp_path)
    assert not (tmp_path / "out").exists()


def test_calibration_windows_from_a_dataset_are_the_texts_tokenised_and_joined(
    tiny_base: Path, tmp_path: Path
) -> None:
    texts = heldout_texts(40, seed=7)
    folder = _dataset(tmp_path / "ds", texts)
    tok = AutoTokenizer.from_pretrained(tiny_base)
    windows = calibration_windows(str(folder), tok, samples=5, seq_len=32)
    joined = [i for t in texts for i in [*tok(t, add_special_tokens=False)["input_ids"], tok.eos_token_id]]
    assert [len(w) for w in windows] == [32] * 5
    assert [i for w in windows for i in w] == joined[:160]
    # the manifest URI reads the same; a text file gives one passage per line
    assert calibration_windows((folder / "manifest.json").as_uri(), tok, samples=5, seq_len=32) == windows
    txt = tmp_path / "c.txt"
    txt.write_text("\n".join(texts), encoding="utf-8")
    assert calibration_windows(str(txt), tok, samples=5, seq_len=32) == windows


def test_a_manifest_inside_the_roots_cannot_lead_outside_them(tiny_base: Path, tmp_path: Path) -> None:
    outside = _dataset(tmp_path / "outside", heldout_texts(40))
    inside = tmp_path / "root" / "ds"
    inside.mkdir(parents=True)
    manifest = {
        "dataset_id": "x",
        "documents": 40,
        "shards": [{"path": str(outside / "shard-00000.jsonl.gz")}],
    }
    (inside / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    tok = AutoTokenizer.from_pretrained(tiny_base)
    roots = ReadRoots([str(tmp_path / "root")])
    with pytest.raises(OutsideReadRoots, match=r"dataset shard .* is outside"):
        calibration_windows(str(inside), tok, samples=2, seq_len=32, read_roots=roots)
    with pytest.raises(OutsideReadRoots, match=r"calibration data .* is outside"):
        calibration_windows(str(outside), tok, samples=2, seq_len=32, read_roots=roots)


def _logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


# relative logit error measured: 0.004 (rtn int8), 0.065 (awq int4); a broken layout gives ~1
@pytest.mark.parametrize(("method", "bits", "tolerance"), [("rtn", 8, 0.01), ("awq", 4, 0.15)])
def test_the_quantised_folder_follows_the_unquantised_model(
    tiny_base: Path, tmp_path: Path, method: str, bits: int, tolerance: float
) -> None:
    calib = _dataset(tmp_path / "calib", heldout_texts(80, seed=5))
    spec = QuantizeSpec(
        method=method, bits=bits, group_size=32, calibration_samples=8, calibration_seq_len=64
    )  # type: ignore[arg-type]
    outcome = run_quantize(
        tiny_base, tmp_path / "q", spec, calib, parent={"model_name": "tiny", "version": 1}
    )
    assert outcome.lineage.method == method and outcome.lineage.bits == bits
    assert outcome.lineage.group_size == 32
    assert outcome.lineage.calibration_tokens == (512 if method == "awq" else 0)
    lineage = json.loads((tmp_path / "q" / "lineage.json").read_text())
    assert lineage["parent"] == {"model_name": "tiny", "version": 1} and lineage["kind"] == "quantize"
    config = json.loads((tmp_path / "q" / "config.json").read_text())
    assert config["quantization_config"]["bits"] == bits
    assert outcome.metrics["compression"] > 1.0

    quantised, _ = load_causal_lm(tmp_path / "q", dtype="float32")
    assert sum(isinstance(m, QuantLinear) for m in quantised.modules()) == 14  # 7 projections x 2 layers
    reference = AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32)  # the original weights
    tok = AutoTokenizer.from_pretrained(tiny_base)
    ids = torch.tensor([tok(" ".join(heldout_texts(3, seed=99)))["input_ids"][:48]])
    expected, got = _logits(reference, ids), _logits(quantised, ids)
    error = (got - expected).norm() / expected.norm()
    assert error < tolerance, f"{method} {bits}-bit: relative logit error {error:.4f}"


def test_the_service_core_checks_the_base_and_stores_the_output(tiny_base: Path, tmp_path: Path) -> None:
    store = ArtifactStore((tmp_path / "store").as_uri())
    base_dir = store.local_staging("models/tiny/1")
    shutil.copytree(tiny_base, base_dir, dirs_exist_ok=True)
    base = store.ref_for(base_dir.as_uri())
    quantizer = Quantizer(store, read_roots=ReadRoots([store.root_uri]))
    spec = QuantizeSpec(method="rtn", bits=8, group_size=32)
    ref = ModelRef(model_name="tiny", version=1)

    missing = ArtifactRef(uri=store.uri("models/tiny/9"), sha256=base.sha256, size_bytes=1)
    with pytest.raises(InvalidInput, match="artifact not found"):  # the parent's folder is gone
        quantizer.quantize("j0", spec, base=ref, base_artifact=missing, calibration_uri=None)
    with pytest.raises(OutsideReadRoots, match="base model"):
        elsewhere = ArtifactRef(uri=tiny_base.as_uri(), sha256=base.sha256, size_bytes=1)
        quantizer.quantize("j0", spec, base=ref, base_artifact=elsewhere, calibration_uri=None)
    with pytest.raises(DigestMismatch, match="does not match its sha256"):
        altered = base.model_copy(update={"sha256": "0" * 64})
        quantizer.quantize("j0", spec, base=ref, base_artifact=altered, calibration_uri=None)

    result = quantizer.quantize("job/1", spec, base=ref, base_artifact=base, calibration_uri=None)
    assert result.run_id == "qz-job_1" and result.model.uri == store.uri("runs/qz-job_1/model")
    assert store.ref_for(result.model.uri) == result.model  # the digest the event will carry
    assert result.lineage.quant_method == "gptq" and result.lineage.bits == 8
    again = quantizer.quantize("job/1", spec, base=ref, base_artifact=base, calibration_uri=None)
    assert again.model.uri == result.model.uri  # a redelivery overwrites the same run


def test_puyu_quantize_writes_the_folder_and_refuses_with_the_reason(
    tiny_base: Path, tmp_path: Path, calib_txt: Path
) -> None:
    from click.testing import CliRunner

    from services.cli.__main__ import main

    base = ["quantize", "--model", str(tiny_base), "--out", str(tmp_path / "q")]
    ok = CliRunner().invoke(
        main,
        [
            *base,
            "--method",
            "gptq",
            "--bits",
            "4",
            "--group-size",
            "32",
            "--calib",
            str(calib_txt),
            "--samples",
            "4",
            "--seq-len",
            "64",
        ],
    )
    assert ok.exit_code == 0, ok.output
    shown = json.loads(ok.stdout)
    assert shown["quantization"]["method"] == "gptq" and shown["quantization"]["calibration_tokens"] == 256
    assert (
        json.loads((tmp_path / "q" / "config.json").read_text())["quantization_config"]["meta"]["method"]
        == "gptq"
    )
    again = CliRunner().invoke(main, [*base, "--method", "rtn", "--group-size", "32"])
    assert again.exit_code == 2 and "exists and is not empty" in again.stderr
    odd = CliRunner().invoke(main, [*base, "--method", "rtn", "--group-size", "48", "--overwrite"])
    assert odd.exit_code == 2 and "group size 48 does not divide" in odd.stderr
    bits = CliRunner().invoke(main, [*base, "--bits", "3"])
    assert bits.exit_code == 2 and "'3' is not one of '4', '8'" in bits.output
