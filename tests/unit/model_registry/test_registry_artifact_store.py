"""The registry registers only artifacts inside the configured artifact store (a forged
checkpoint.ready naming any other folder would otherwise be evaluated, promoted and served)."""

from __future__ import annotations

from pathlib import Path

import pytest

from contracts.events import ArtifactRef
from services.model_registry.core import InvalidInput
from services.model_registry.core.database import make_engine, migrate
from services.model_registry.core.errors import OutsideArtifactStore
from services.model_registry.core.registry import Registry


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    engine = make_engine(f"sqlite:///{tmp_path / 'registry.db'}")
    migrate(engine)
    (tmp_path / "artifacts" / "runs").mkdir(parents=True)
    (tmp_path / "artifacts" / "runs" / "link").symlink_to(tmp_path)
    return Registry(engine, artifact_root=(tmp_path / "artifacts").as_uri())


def art(uri: str) -> ArtifactRef:
    return ArtifactRef(uri=uri, sha256="a" * 64, size_bytes=1)


def test_a_checkpoint_outside_the_store_is_refused(registry: Registry, tmp_path: Path) -> None:
    store = (tmp_path / "artifacts").as_uri()
    for uri in ("file:///home/attacker/model", f"{store}/../elsewhere", f"{store}/runs/link/elsewhere"):
        with pytest.raises(OutsideArtifactStore) as err:
            registry.register_version("demo", art(uri), event_id=f"ckpt:{uri}")
        assert isinstance(err.value, InvalidInput)  # gRPC INVALID_ARGUMENT, HTTP 400, bus rejected
        assert str(err.value) == (
            f"artifact {uri} is outside the artifact store {store}: only what the store holds is registered"
        )
    adapter = art("file:///home/attacker/adapter")
    with pytest.raises(OutsideArtifactStore, match="adapter"):
        registry.register_version("demo", art(f"{store}/runs/r/model"), adapter=adapter)
    assert registry.list_models() == []
    v = registry.register_version("demo", art(f"{store}/runs/r/model"), event_id="ckpt:r:1")
    assert v is not None and v.version == 1
