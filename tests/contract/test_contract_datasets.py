"""The dataset manifest contract that ingest and dedup write and the trainer and agents read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from contracts.datasets import DatasetError, read_manifest, shard_uris


def test_shard_paths_resolve_relative_to_the_manifest(tmp_path: Path) -> None:
    manifest = tmp_path / "ds" / "manifest.json"
    manifest.parent.mkdir()
    manifest.write_text(
        json.dumps(
            {
                "dataset_id": "ds",
                "documents": 3,
                "shards": [{"path": "data/part-0.jsonl.gz", "sha256": "a"}, {"path": "s3://bucket/x.jsonl"}],
            }
        )
    )
    uri = manifest.as_uri()
    assert shard_uris(uri) == [f"{manifest.parent.as_uri()}/data/part-0.jsonl.gz", "s3://bucket/x.jsonl"]
    assert read_manifest(uri).documents == 3


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{", "cannot read dataset manifest"),
        ('{"dataset_id": "x", "documents": 1}', "shards"),
        ('{"dataset_id": "x", "documents": 1, "shards": [{"sha256": "a"}]}', "shards.0.path: Field required"),
    ],
)
def test_bad_manifests_name_the_problem(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "manifest.json"
    path.write_text(content)
    with pytest.raises(DatasetError, match=message.replace(".", r"\.")):
        read_manifest(path.as_uri())
    with pytest.raises(DatasetError, match="not found"):
        read_manifest((tmp_path / "missing.json").as_uri())
