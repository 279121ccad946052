from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from transformers import AutoModelForCausalLM

from services.finetuner.cli import check_data_cmd, finetune_cmd


def test_check_data_cmd(chat_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert check_data_cmd(chat_file) == 0
    bad = tmp_path / "bad.jsonl"
    bad.write_text(chat_file.read_text().splitlines()[0] + "\n[1, 2]\n")
    assert check_data_cmd(bad) == 1
    assert "line 2" in capsys.readouterr().out


def test_finetune_cmd_runs_from_yaml(
    tiny_base: Path, chat_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "ft.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "base_model": str(tiny_base),
                "dataset": chat_file.name,
                "out_dir": "out",
                "device": "cpu",
                "spec": {"max_steps": 4, "micro_batch_size": 4, "seq_len": 64},
            }
        )
    )
    assert finetune_cmd(cfg) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["steps"] == 4 and Path(result["model"]) == tmp_path / "out" / "model"
    AutoModelForCausalLM.from_pretrained(result["model"])


def test_finetune_cmd_refuses_clearly(
    tmp_path: Path, chat_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "ft.json"
    cfg.write_text(
        json.dumps(
            {"base_model": "nope", "dataset": str(chat_file), "out_dir": "o", "spec": {"method": "qlora"}}
        )
    )
    assert finetune_cmd(cfg) == 2
    assert "QLoRA needs a CUDA GPU" in capsys.readouterr().err
    cfg.write_text(json.dumps({"base_model": "nope", "dataset": str(chat_file), "out_dir": "o"}))
    assert finetune_cmd(cfg) == 2
    assert "not a Hugging Face model folder" in capsys.readouterr().err
