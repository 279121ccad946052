from __future__ import annotations

from pathlib import Path

import pytest
import torch

from shared.samples import CHAT_TEMPLATE
from tests.support.data import chat_tokenizer_texts, write_chat_dataset
from tests.support.tiny_model import build_tiny_model

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama with the demo chat template."""
    return build_tiny_model(
        tmp_path_factory.mktemp("base"),
        chat_tokenizer_texts(),
        chat_template=CHAT_TEMPLATE,
        unk_token="<unk>",
        max_positions=512,
    )


@pytest.fixture(scope="session")
def tiny_base_no_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(
        tmp_path_factory.mktemp("base-plain"), chat_tokenizer_texts(), unk_token="<unk>", max_positions=512
    )


@pytest.fixture
def chat_file(tmp_path: Path) -> Path:
    return write_chat_dataset(tmp_path / "chat.jsonl", n=64)
