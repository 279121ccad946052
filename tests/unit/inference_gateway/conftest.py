from pathlib import Path

import pytest
import torch

from tests.support.tiny_model import build_serving_model


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    return build_serving_model(tmp_path_factory.mktemp("gw") / "tiny")


@pytest.fixture(autouse=True)
def _fp32_serving(monkeypatch: pytest.MonkeyPatch) -> None:
    """Engines built from settings (``puyu serve``'s app) load in fp32, as the references these tests
    compare with: ``auto`` would pick bf16 on a processor that multiplies it natively. Tests of the
    precision choice set or clear ``PUYU_GATEWAY_DTYPE`` themselves."""
    monkeypatch.setenv("PUYU_GATEWAY_DTYPE", "float32")
