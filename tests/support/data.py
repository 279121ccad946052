"""Datasets the tests write, from the demo's samples (``shared.samples``)."""

from __future__ import annotations

import json
from pathlib import Path

from shared.samples import chat_examples, heldout_texts


def write_chat_dataset(path: Path, n: int = 200, seed: int = 3) -> Path:
    """The demo's chat examples as an OpenAI-messages JSONL file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in chat_examples(n, seed)))
    return path


def chat_tokenizer_texts() -> list[str]:
    """Texts for a chat model's tokenizer: held-out prose, the chat examples' turns and the role
    markers of the chat templates the finetuner knows."""
    texts = list(heldout_texts(200))
    for rec in chat_examples(100):
        texts += [m["content"] for m in rec["messages"]]  # type: ignore[attr-defined]
    return [*texts, "User:", "Assistant:", "System:", "<|im_start|>", "<|im_end|>"]
