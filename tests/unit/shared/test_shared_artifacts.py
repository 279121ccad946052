from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from shared.artifacts import ArtifactStore, local_path, sha256_dir


def test_put_dir_checksums_content_and_layout(tmp_path: Path) -> None:
    src = tmp_path / "ckpt"
    (src / "sub").mkdir(parents=True)
    (src / "model.safetensors").write_bytes(b"weights")
    (src / "sub" / "config.json").write_text("{}")
    store = ArtifactStore((tmp_path / "store").as_uri())

    ref = store.put_dir(src, "runs/r1/step-1")
    assert ref.uri.endswith("/runs/r1/step-1") and ref.size_bytes == len(b"weights") + 2
    fetched = store.fetch(ref.uri)
    assert (fetched / "sub" / "config.json").read_text() == "{}"
    assert sha256_dir(fetched)[0] == ref.sha256

    (src / "sub" / "config.json").write_text("{ }")  # any change of content changes the checksum
    assert sha256_dir(src)[0] != ref.sha256
    (src / "sub" / "config.json").write_text("{}")
    (src / "sub" / "config.json").rename(src / "config.json")  # and so does a move
    assert sha256_dir(src)[0] != ref.sha256


def test_files_and_json_round_trip(tmp_path: Path) -> None:
    store = ArtifactStore((tmp_path / "store").as_uri())
    src = tmp_path / "a.bin"
    src.write_bytes(b"abc")
    ref = store.put_file(src, "x/a.bin")
    assert ref.sha256 == hashlib.sha256(b"abc").hexdigest()
    assert store.exists(ref.uri) and not store.exists(store.uri("x/missing"))
    jref = store.write_json("x/m.json", {"b": 1, "a": [1, 2]})
    assert store.read_json(jref.uri) == {"a": [1, 2], "b": 1}
    assert store.ref_for(jref.uri).sha256 == jref.sha256


def test_fetch_of_a_missing_artifact_names_it(tmp_path: Path) -> None:
    store = ArtifactStore((tmp_path / "store").as_uri())
    with pytest.raises(FileNotFoundError, match="nope"):
        store.fetch(store.uri("nope"))


def test_local_path_understands_plain_paths_and_file_uris() -> None:
    assert local_path("/a/b") == Path("/a/b")
    assert local_path("file:///a/b") == Path("/a/b")
    assert local_path("s3://bucket/key") is None
