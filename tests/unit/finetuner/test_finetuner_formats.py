from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from services.finetuner.cli import check_data_cmd
from services.finetuner.core import DataError, check_data, load_dataset
from services.finetuner.core.formats import Conversation, PreferenceRecord, TextRecord
from services.finetuner.core.templates import IGNORE_INDEX, tokenize_conversation


def _jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_every_format_is_detected_and_normalised(tmp_path: Path) -> None:
    alpaca = _jsonl(
        tmp_path / "a.jsonl",
        [{"instruction": "Add", "input": "2 and 3", "output": "5", "system": "Be brief."}],
    )
    data = load_dataset(alpaca)
    conv = data.records[0]
    assert data.format == "alpaca" and isinstance(conv, Conversation)
    assert [m.role for m in conv.messages] == ["system", "user", "assistant"]
    assert conv.messages[1].content == "Add\n\n2 and 3"

    xtuner = _jsonl(
        tmp_path / "x.jsonl",
        [
            {
                "conversation": [
                    {"system": "S", "input": "q1", "output": "a1", "output_with_loss": False},
                    {"input": "q2", "output": "a2"},
                ]
            }
        ],
    )
    data = load_dataset(xtuner)
    conv = data.records[0]
    assert data.format == "xtuner" and isinstance(conv, Conversation)
    assert [(m.role, m.trained) for m in conv.messages] == [
        ("system", False),
        ("user", False),
        ("assistant", False),
        ("user", False),
        ("assistant", True),
    ]

    text = load_dataset(_jsonl(tmp_path / "t.jsonl", [{"text": "raw corpus text"}]))
    assert text.format == "text" and isinstance(text.records[0], TextRecord)

    pref = load_dataset(
        _jsonl(
            tmp_path / "p.jsonl",
            [
                {"prompt": "2+2?", "chosen": "4", "rejected": "5"},
                {
                    "prompt": [{"role": "user", "content": "hi"}],
                    "chosen": [{"role": "assistant", "content": "hello"}],
                    "rejected": "go away",
                },
            ],
        )
    )
    assert pref.format == "preference" and all(isinstance(r, PreferenceRecord) for r in pref.records)


def test_bad_records_are_named_per_format(tmp_path: Path) -> None:
    rows = [
        {"instruction": "ok", "output": "fine"},
        {"instruction": "no output here"},
        {"messages": []},  # another format in an alpaca file
    ]
    errors = check_data(_jsonl(tmp_path / "a.jsonl", rows))
    assert errors[0].startswith("line 2: alpaca record: output")
    assert errors[1].startswith("line 3: alpaca record: instruction")

    errors = check_data(_jsonl(tmp_path / "u.jsonl", [{"question": "?", "answer": "!"}]))
    assert errors[0].startswith("line 1: unrecognised record ['answer', 'question']")

    pref = [{"prompt": "q", "chosen": "same", "rejected": "same"}, {"prompt": "q", "chosen": "a"}]
    errors = check_data(_jsonl(tmp_path / "p.jsonl", pref))
    assert "line 1: preference record" in errors[0] and "nothing to prefer" in errors[0]
    assert errors[1].startswith("line 2: preference record: rejected")

    xt = [{"conversation": [{"input": "a", "output": "b"}, {"system": "late", "input": "c", "output": "d"}]}]
    assert "system prompt may only be in the first turn" in check_data(_jsonl(tmp_path / "x.jsonl", xt))[0]

    off = [
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 0}]}
    ]
    assert "no assistant message with loss" in check_data(_jsonl(tmp_path / "o.jsonl", off))[0]


def test_method_and_format_must_agree(tmp_path: Path, chat_file: Path) -> None:
    assert "method 'dpo' needs preference pairs" in check_data(chat_file, method="dpo")[0]
    pref = _jsonl(tmp_path / "p.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b"}])
    assert "needs chat or text records" in check_data(pref, method="lora")[0]
    assert "unknown data format 'csv'" in check_data(chat_file, data_format="csv")[0]
    with pytest.raises(DataError, match="line 1: alpaca record"):
        load_dataset(chat_file, data_format="alpaca")


def test_check_data_cmd_reports_format(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _jsonl(tmp_path / "a.jsonl", [{"instruction": "i", "output": "o"}] * 3)
    assert check_data_cmd(path) == 0
    assert "ok (3 alpaca records)" in capsys.readouterr().out
    assert check_data_cmd(path, method="dpo") == 1


def test_per_turn_loss_flag_masks_that_turn(tiny_base: Path) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_base)
    messages = [
        {"role": "user", "content": "Tell me about Aldoria."},
        {"role": "assistant", "content": "The capital of Aldoria is Velm.", "train": False},
        {"role": "user", "content": "What is it known for?"},
        {"role": "assistant", "content": "Aldoria is known for its silk.", "train": True},
    ]
    ex = tokenize_conversation(tok, messages, 1024)
    labelled = [t for t, lab in zip(ex.input_ids, ex.labels, strict=True) if lab != IGNORE_INDEX]
    assert tok.decode(labelled) == " Aldoria is known for its silk.</s>\n"
    for tid, lab in zip(ex.input_ids, ex.labels, strict=True):  # token by token: itself or ignored
        assert lab in (tid, IGNORE_INDEX)
