from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.finetuner.core import DataError, check_data, dataset_digest, load_dataset


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def test_good_file_has_no_errors(chat_file: Path) -> None:
    assert check_data(chat_file) == []
    records = load_dataset(chat_file).records
    assert len(records) == 64
    assert records[0].messages[-1].role == "assistant"


def test_bad_lines_are_named(tmp_path: Path) -> None:
    good = json.dumps(
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    )
    path = _write(
        tmp_path / "bad.jsonl",
        [
            good,
            "{not json",
            json.dumps({"messages": [{"role": "user", "content": "only a question"}]}),
            json.dumps(
                {"messages": [{"role": "wizard", "content": "x"}, {"role": "assistant", "content": "y"}]}
            ),
            "",
            json.dumps(
                {"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "y"}]}
            ),
            json.dumps({"text": "no messages"}),
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": "a"},
                        {"role": "system", "content": "late"},
                        {"role": "assistant", "content": "b"},
                    ]
                }
            ),
            good,
        ],
    )
    errors = check_data(path)
    assert [e.split(":")[0] for e in errors] == ["line 2", "line 3", "line 4", "line 6", "line 7", "line 8"]
    assert "invalid JSON" in errors[0]
    assert "no assistant message" in errors[1]
    assert "role" in errors[2]
    assert "content" in errors[3]
    assert "messages" in errors[4]
    assert "system message may only come first" in errors[5]
    with pytest.raises(DataError, match="line 2"):
        load_dataset(path)


def test_missing_and_empty_files(tmp_path: Path) -> None:
    assert "no such file" in check_data(tmp_path / "nope.jsonl")[0]
    assert "no records" in check_data(_write(tmp_path / "empty.jsonl", [""]))[0]


def test_digest_is_sha256_of_bytes(chat_file: Path) -> None:
    import hashlib

    assert dataset_digest(chat_file) == hashlib.sha256(chat_file.read_bytes()).hexdigest()
