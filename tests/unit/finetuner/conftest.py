from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from model_references import INTERNLM_FIXTURES

from services.finetuner.tiny import build_tiny_base
from shared.samples import CHAT_TEMPLATE, chat_examples, heldout_texts

torch.set_num_threads(2)

# XTuner's InternLM code and SentencePiece, for the tests that compare against them (tests/model_references.py).
sentencepiece = INTERNLM_FIXTURES["sentencepiece"]
xtuner_modelings = INTERNLM_FIXTURES["xtuner_modelings"]
internlm_sentencepiece_model = INTERNLM_FIXTURES["internlm_sentencepiece_model"]


def write_chat_dataset(path: Path, n: int = 200, seed: int = 3) -> Path:
    """The demo's chat examples as an OpenAI-messages JSONL file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in chat_examples(n, seed)))
    return path


def _tokenizer_texts() -> list[str]:
    texts = list(heldout_texts(200))
    for rec in chat_examples(100):
        texts += [m["content"] for m in rec["messages"]]  # type: ignore[attr-defined]
    return [*texts, "User:", "Assistant:", "System:", "<|im_start|>", "<|im_end|>"]


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama with the demo chat template."""
    return build_tiny_base(tmp_path_factory.mktemp("base"), _tokenizer_texts(), chat_template=CHAT_TEMPLATE)


@pytest.fixture(scope="session")
def tiny_base_no_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_base(tmp_path_factory.mktemp("base-plain"), _tokenizer_texts())


@pytest.fixture
def chat_file(tmp_path: Path) -> Path:
    return write_chat_dataset(tmp_path / "chat.jsonl", n=64)
