"""A registered version is evaluated only as registered: a folder swapped after registration, or one
outside the artifact store, is refused with the reason before anything is loaded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from contracts.events import ArtifactRef, ModelRef
from services.evaluator.config import EvaluatorSettings
from services.evaluator.core import Evaluator
from shared.artifacts import ArtifactStore, DigestMismatch, OutsideArtifactStore


@pytest.fixture
def evaluator(tmp_path: Path) -> tuple[Evaluator, ArtifactRef]:
    store = ArtifactStore((tmp_path / "artifacts").as_uri())
    staging = store.local_staging("models/m/v1")
    (staging / "config.json").write_text(json.dumps({"model_type": "llama"}))
    artifact = store.put_dir(staging, "models/m/v1")
    settings = EvaluatorSettings(
        home=tmp_path / "home", artifact_root=store.root_uri, evaluator_no_cache=True
    )
    return Evaluator(settings, store), artifact


def test_a_swapped_folder_is_refused_before_evaluation(evaluator: tuple[Evaluator, ArtifactRef]) -> None:
    core, artifact = evaluator
    folder = Path(artifact.uri.removeprefix("file://"))
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "swapped": True}))
    with pytest.raises(DigestMismatch, match=f"not the {artifact.sha256} it was registered with"):
        core.evaluate_version(ModelRef(model_name="m", version=1), artifact, ["perplexity"])


def test_a_folder_outside_the_store_is_refused(
    evaluator: tuple[Evaluator, ArtifactRef], tmp_path: Path
) -> None:
    core, artifact = evaluator
    elsewhere = ArtifactRef(uri=(tmp_path / "elsewhere").as_uri(), sha256=artifact.sha256, size_bytes=1)
    with pytest.raises(OutsideArtifactStore, match="is outside the artifact store"):
        core.evaluate_version(ModelRef(model_name="m", version=1), elsewhere, ["perplexity"])
