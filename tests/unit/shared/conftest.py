"""Independent references for the model-folder loader, as session fixtures. The builders and the
downloads live in ``tests/support/hf_folders.py``, importable by any test; their names are
re-exported here for the tests (and ``tests/model_references.py``) that read them from this file."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest

from tests.support.hf_folders import (
    INTERNLM_SPECIAL,
    REMOTE_CODE,
    build_original,
    cache_root,
    corpus,
    download_wheel,
    import_sentencepiece,
    internlm_tokenizer_config,
    load_original,
    randomize,
    train_sentencepiece,
    unpack_xtuner_modelings,
)

__all__ = [
    "INTERNLM_SPECIAL",
    "REMOTE_CODE",
    "build_original",
    "cache_root",
    "corpus",
    "download_wheel",
    "internlm_tokenizer_config",
    "load_original",
    "randomize",
    "train_sentencepiece",
]


@pytest.fixture(scope="session")
def sentencepiece() -> ModuleType:
    return import_sentencepiece()


@pytest.fixture(scope="session")
def xtuner_modelings(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return unpack_xtuner_modelings(tmp_path_factory.mktemp("xtuner-modelings"))


@pytest.fixture(scope="session")
def internlm_sentencepiece_model(sentencepiece: ModuleType) -> bytes:
    return train_sentencepiece(sentencepiece)
