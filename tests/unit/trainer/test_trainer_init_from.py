"""Continued pretraining (``TrainSpec.init_from``) from InternLM2- and Qwen2-format checkpoints,
against the independent references of tests/model_references.py (XTuner's original InternLM2 code,
transformers' Qwen2), and the submit-time refusals of an unusable checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from contracts.events import DatasetRef, ModelArchitecture, TrainRequested, TrainSpec
from services.trainer.core import TrainConfigError, TrainJob, run_training, validate
from services.trainer.core.data import PackedDataset, SeededSampler, map_tokens
from services.trainer.grpc_api import check_request
from shared.artifacts import ArtifactStore
from shared.hf_models import load_tokenizer
from tests.support import hf_folders as hf_references
from tests.support.model_references import INTERNLM, build_folder, load_reference, packed_loss

DATASET = DatasetRef(dataset_id="d", manifest_uri="file:///data/manifest.json", digest="0" * 64)


def init_spec(folder: Path, **overrides: object) -> TrainSpec:
    values: dict[str, object] = dict(
        init_from=str(folder),
        seq_len=32,
        micro_batch_size=4,
        gradient_accumulation_steps=2,
        max_steps=16,
        warmup_steps=2,
        learning_rate=3e-3,
        min_learning_rate=3e-4,
        precision="fp32",
        torch_compile="off",
        num_threads=2,
    )
    values.update(overrides)
    return TrainSpec.model_validate(values)


def write_corpus(path: Path, documents: int = 160) -> Path:
    """Documents in the words the tiny tokenizers were trained on."""
    lines = list(hf_references.corpus(seed=5))
    docs = [" ".join(lines[3 * i : 3 * i + 3]).strip() for i in range(documents)]
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return path


def first_step_batches(run_dir: Path, spec: TrainSpec, tokenizer: object) -> list[dict]:
    """The micro batches of the run's first optimizer step, rebuilt from its token file and seed."""
    dataset = PackedDataset(map_tokens(run_dir / "data" / "train.bin"), spec.seq_len, 0, spec.seed)
    sampler = SeededSampler(dataset, spec.micro_batch_size, spec.seed, eos_id=tokenizer.eos_token_id)  # type: ignore[attr-defined]
    return [sampler.next_batch() for _ in range(spec.gradient_accumulation_steps)]


@pytest.fixture(params=["internlm2", "qwen2"])
def checkpoint(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, Path]:
    return request.param, build_folder(tmp_path / f"init-{request.param}", request.param, request)


def test_continued_pretraining_starts_from_the_checkpoint_and_saves_in_its_format(
    checkpoint: tuple[str, Path], tmp_path: Path
) -> None:
    architecture, folder = checkpoint
    spec = init_spec(folder)
    run_dir = tmp_path / "run"
    data = write_corpus(tmp_path / "corpus.jsonl")
    result = run_training(
        TrainJob("cpt", spec, [str(data)]), run_dir, ArtifactStore((tmp_path / "art").as_uri()), device="cpu"
    )

    # Step 1 trains the checkpoint's own weights on the checkpoint's own tokens: its loss is the
    # reference's on the same batches (each packed document attending only to itself).
    tokenizer = load_tokenizer(folder)
    batches = first_step_batches(run_dir, spec, tokenizer)
    assert any(int((b["position_ids"][:, 1:] == 0).sum()) for b in batches)  # documents are packed
    initial = load_reference(folder)
    expected = sum(packed_loss(initial, b) for b in batches) / len(batches)
    losses = [m.loss for m in result.history]
    assert losses[0] == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert sum(losses[-3:]) / 3 < losses[0] - 0.3, losses

    ckpt = result.checkpoint
    config = json.loads((ckpt / "config.json").read_text())
    assert config["model_type"] == architecture
    assert json.loads((ckpt / "lineage.json").read_text())["spec"]["init_from"] == str(folder)
    if architecture in INTERNLM:  # InternLM2's tensor names (fused wqkv) and its code and tokenizer
        assert (
            load_file(str(ckpt / "model.safetensors")).keys()
            == load_file(str(folder / "model.safetensors")).keys()
        )
        assert (ckpt / "modeling_internlm2.py").is_file()
        assert (ckpt / "tokenizer.model").read_bytes() == (folder / "tokenizer.model").read_bytes()
    text = "the model reads 12 plus 30"
    assert load_tokenizer(ckpt)(text)["input_ids"] == tokenizer(text)["input_ids"]
    # The saved checkpoint, read by the reference, is the trained model: lower loss on those batches.
    trained = load_reference(ckpt)
    assert sum(packed_loss(trained, b) for b in batches) / len(batches) < expected - 0.3


@pytest.fixture
def qwen2_folder(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    return build_folder(tmp_path / "qwen2", "qwen2", request)


def test_a_checkpoint_that_cannot_start_the_run_is_refused_at_submit(
    qwen2_folder: Path, tmp_path: Path
) -> None:
    assert validate(init_spec(qwen2_folder)).init_from == str(qwen2_folder)
    cases = {
        "no such folder": init_spec(tmp_path / "missing"),
        "tokenizer_uri must be unset": init_spec(qwen2_folder, tokenizer_uri=str(qwen2_folder)),
        "architecture.hidden_size is 256, the checkpoint's is 64": init_spec(
            qwen2_folder,
            architecture=ModelArchitecture(hidden_size=256, num_attention_heads=4, num_key_value_heads=2),
        ),
        "seq_len \\(256\\) exceeds the checkpoint's max_position_embeddings \\(128\\)": init_spec(
            qwen2_folder, seq_len=256
        ),
    }
    for message, spec in cases.items():
        with pytest.raises(TrainConfigError, match=message):
            validate(spec)
        with pytest.raises(ValueError, match=message):  # the gRPC submit check: INVALID_ARGUMENT
            check_request(TrainRequested(job_id="j", datasets=[DATASET], spec=spec))

    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(TrainConfigError, match="model_type 'gpt2' is not supported"):
        validate(init_spec(gpt2))
    no_tokenizer = tmp_path / "no-tokenizer"
    no_tokenizer.mkdir()
    for name in ("config.json", "model.safetensors"):
        (no_tokenizer / name).write_bytes((qwen2_folder / name).read_bytes())
    with pytest.raises(TrainConfigError, match="no tokenizer"):
        validate(init_spec(no_tokenizer))
    (no_tokenizer / "model.safetensors").unlink()
    with pytest.raises(TrainConfigError, match="no weights"):
        validate(init_spec(no_tokenizer))
    # A field at its default takes the checkpoint's value; one that agrees with it is accepted.
    agreeing = ModelArchitecture(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, vocab_size=400)
    assert validate(init_spec(qwen2_folder, architecture=agreeing)).architecture == agreeing
