from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from services.finetuner.core import load_dataset
from services.finetuner.core.packing import build_examples, collate, collate_packed, pack, schedule
from services.finetuner.core.templates import IGNORE_INDEX


@pytest.fixture
def examples(tiny_base: Path, chat_file: Path) -> list:  # type: ignore[type-arg]
    tok = AutoTokenizer.from_pretrained(tiny_base)
    return build_examples(tok, load_dataset(chat_file).records, 96)


def test_pack_keeps_every_token_and_cuts_labels_at_boundaries(examples: list) -> None:  # type: ignore[type-arg]
    rows = pack(examples, 256, seed=0)
    assert all(len(r.input_ids) <= 256 for r in rows)
    assert sum(len(r.input_ids) for r in rows) == sum(len(e.input_ids) for e in examples)
    assert len(rows) < len(examples) / 2  # short chats: several per row
    for r in rows:
        starts = [k for k, p in enumerate(r.position_ids) if p == 0]
        assert starts[0] == 0 and all(r.labels[k] == IGNORE_INDEX for k in starts)
    # every example's trainable tokens survive, except a first token (never labelled in chat data)
    assert sum(r.trainable_tokens for r in rows) == sum(e.trainable_tokens for e in examples)


def test_packed_attention_does_not_cross_examples(tiny_base: Path, examples: list) -> None:  # type: ignore[type-arg]
    """Logits and loss of a packed row equal those of its examples run one by one."""
    model = AutoModelForCausalLM.from_pretrained(tiny_base).eval()
    row = pack(examples[:3], 512, seed=0)[0]
    assert row.position_ids.count(0) == 3
    batch = collate_packed([row], pad_id=0)
    with torch.no_grad():
        packed = model(**batch, use_cache=False)
        starts = [k for k, p in enumerate(row.position_ids) if p == 0] + [len(row.input_ids)]
        total, count = 0.0, 0
        for a, b in itertools.pairwise(starts):
            ids = torch.tensor([row.input_ids[a:b]])
            labels = torch.tensor([row.labels[a:b]])
            alone = model(input_ids=ids, labels=labels)
            torch.testing.assert_close(packed.logits[0, a:b], alone.logits[0], atol=1e-5, rtol=1e-4)
            n = int((labels[0, 1:] != IGNORE_INDEX).sum())
            total, count = total + float(alone.loss) * n, count + n
    assert float(packed.loss) == pytest.approx(total / count, rel=1e-4)


def test_padded_collate_and_schedule(examples: list) -> None:  # type: ignore[type-arg]
    batch = collate(examples[:4], pad_id=3)
    assert batch["input_ids"].shape[0] == 4 and int(batch["attention_mask"].sum()) == sum(
        len(e.input_ids) for e in examples[:4]
    )
    plan = schedule(10, 4, 6, seed=1)
    assert plan == schedule(10, 4, 6, seed=1) and plan != schedule(10, 4, 6, seed=2)
    assert sorted(plan[0] + plan[1] + plan[2][:2]) == list(range(10))  # one epoch, no repeats
