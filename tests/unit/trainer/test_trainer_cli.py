from pathlib import Path

import yaml
from transformers import AutoModelForCausalLM

from contracts.events import CorpusDeduplicated, DatasetRef, PipelineSpec
from services.trainer.cli import train_cmd
from services.trainer.core import run_id_for
from services.trainer.handlers import train_request_from
from tests.support.trainer_specs import micro_spec


def test_train_cmd_from_yaml_then_resume(corpus_dir: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    config = tmp_path / "train.yaml"
    spec = micro_spec(max_steps=6).model_dump(mode="json")
    config.write_text(
        yaml.safe_dump({"datasets": [str(corpus_dir / "manifest.json")], "spec": spec, "out": "run"})
    )
    assert train_cmd(config, resume=True) == 0
    out = capsys.readouterr().out
    ckpt = tmp_path / "run" / "checkpoints" / "step-6"
    assert "checkpoint:" in out and "step-6" in out.replace("\n", "")
    assert AutoModelForCausalLM.from_pretrained(ckpt).config.num_hidden_layers == 2
    assert train_cmd(config, resume=True) == 0  # finished: nothing to do
    assert "resumed from step 6" in capsys.readouterr().out


def test_train_cmd_reports_bad_config(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    config = tmp_path / "bad.json"
    config.write_text('{"datasets": ["x"], "spec": {"seq_len": 4096}, "out": "r"}')
    assert train_cmd(config, resume=True) == 2
    assert "max_position_embeddings" in capsys.readouterr().out
    config.write_text('{"datasets": ["missing.jsonl"], "out": "r"}')
    assert train_cmd(config, resume=True) == 2
    assert "not found" in capsys.readouterr().out


def test_pipeline_event_becomes_a_train_request() -> None:
    ds = DatasetRef(dataset_id="wiki-dedup", manifest_uri="file:///m.json", digest="d")
    event = CorpusDeduplicated(
        job_id="j",
        source=ds,
        dataset=ds,
        documents_in=2,
        documents_out=1,
        exact_duplicates=1,
        near_duplicates=0,
    )
    assert train_request_from(event) is None
    event.pipeline = PipelineSpec(train=micro_spec())
    request = train_request_from(event)
    assert request is not None and request.job_id == "train-wiki-dedup" and request.datasets == [ds]
    assert run_id_for("train/a b") == "pretrain-train_a_b"
