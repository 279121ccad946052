"""Containment: artifacts only from the artifact store, job inputs only from the read roots; symlinks
and ``..`` are resolved first; refusals name the path and the roots."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.artifacts import ArtifactStore, DigestMismatch, OutsideArtifactStore, uri_within
from shared.read_roots import OutsideReadRoots, ReadRoots
from shared.settings import CommonSettings


def test_uri_within_resolves_dot_dot_and_symlinks(tmp_path: Path) -> None:
    root = tmp_path / "store"
    (root / "models").mkdir(parents=True)
    (root / "escape").symlink_to("/etc")
    assert uri_within((root / "models" / "v1").as_uri(), root.as_uri())
    assert uri_within(str(root / "models"), root.as_uri())  # a plain path
    assert not uri_within(f"{root.as_uri()}/../elsewhere", root.as_uri())
    assert not uri_within((root / "escape" / "passwd").as_uri(), root.as_uri())
    assert not uri_within((tmp_path / "store-twin").as_uri(), root.as_uri())  # a prefix is not a parent
    assert not uri_within("s3://bucket/store/x", root.as_uri())
    assert uri_within("s3://bucket/store/models/v1", "s3://bucket/store")
    assert not uri_within("s3://bucket/store/../other/v1", "s3://bucket/store")
    assert not uri_within("s3://other/store/v1", "s3://bucket/store")
    assert not uri_within("file:///tmp/x", "s3://bucket/store")


def test_fetch_verified_refuses_outside_and_swapped(tmp_path: Path) -> None:
    store = ArtifactStore((tmp_path / "store").as_uri())
    src = tmp_path / "src"
    src.mkdir()
    (src / "weights.bin").write_bytes(b"real")
    ref = store.put_dir(src, "models/m/1")
    assert store.fetch_verified(ref) == tmp_path / "store" / "models" / "m" / "1"
    with pytest.raises(OutsideArtifactStore, match=f"artifact {src.as_uri()} is outside the artifact store"):
        store.fetch_verified(ref.model_copy(update={"uri": src.as_uri()}))
    (tmp_path / "store" / "models" / "m" / "1" / "weights.bin").write_bytes(b"swapped")
    with pytest.raises(DigestMismatch, match=f"not the {ref.sha256} it was registered with"):
        store.fetch_verified(ref)


def test_read_roots_refuse_outside_naming_path_and_roots(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "link").symlink_to("/etc/passwd")
    roots = ReadRoots([(tmp_path / "artifacts").as_uri(), str(data)])
    roots.require(str(data / "corpus.jsonl"))
    roots.require(f"{data}/**/*.jsonl")  # a glob below a root
    roots.require((data / "x.txt").as_uri())
    for bad in ("/etc/passwd", f"{data}/../../etc/passwd", str(data / "link"), "/etc/*", "s3://b/x"):
        with pytest.raises(OutsideReadRoots) as err:
            roots.require(bad)
        assert str(err.value) == (
            f"source {bad} is outside the folders this service may read "
            f"({(tmp_path / 'artifacts').as_uri()}, {data}; PUYU_DATA_ROOTS adds folders)"
        )


def test_default_roots_are_the_store_and_the_demo_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PUYU_DATA_ROOTS", raising=False)
    settings = CommonSettings(home=tmp_path)
    assert settings.read_roots == [
        (tmp_path / "artifacts").resolve().as_uri(),
        str(tmp_path / "sample-corpus"),
        str(tmp_path / "data"),
    ]
    monkeypatch.setenv("PUYU_DATA_ROOTS", '["/srv/corpora"]')
    assert CommonSettings(home=tmp_path).read_roots[1:] == ["/srv/corpora"]
