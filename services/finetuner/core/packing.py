"""Examples -> training batches: padded batches, or packed sequences with boundary-aware attention.

Packing puts several short examples into one ``seq_len`` row and restarts ``position_ids`` at each
example; the first token of each example gets label -100 so no loss crosses a boundary. With
puyu's packed attention (``attention.py``) a batch of rows is flattened into one unpadded sequence
and attention runs per example; on a model that cannot take it, rows stay a padded (B, seq_len)
batch with no 2-D mask, from which transformers builds a block-diagonal causal mask. Either way no
example attends to its neighbours, and no token is spent on padding, which is what makes packing
faster than padded batches.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from services.finetuner.core.formats import Conversation, PreferenceRecord, Record, TextRecord
from services.finetuner.core.templates import IGNORE_INDEX, Example, tokenize_conversation, tokenize_text


@dataclass
class PackedRow:
    input_ids: list[int]
    labels: list[int]
    position_ids: list[int]

    @property
    def trainable_tokens(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE_INDEX)


@dataclass
class PreferencePair:
    chosen: Example
    rejected: Example


def build_examples(tokenizer: Any, records: Sequence[Record], seq_len: int) -> list[Example]:
    """Supervised examples; those left with no trainable token by truncation are dropped."""
    examples = []
    for r in records:
        if isinstance(r, Conversation):
            examples.append(tokenize_conversation(tokenizer, r.as_dicts(), seq_len))
        elif isinstance(r, TextRecord):
            examples.append(tokenize_text(tokenizer, r.text, seq_len))
        else:
            raise ValueError(f"{type(r).__name__} records need method 'dpo'")
    kept = [e for e in examples if e.trainable_tokens > 0]
    if not kept:
        raise ValueError(f"no example has assistant tokens within seq_len={seq_len}")
    return kept


def build_pairs(tokenizer: Any, records: Sequence[Record], seq_len: int) -> list[PreferencePair]:
    pairs = []
    for r in records:
        if not isinstance(r, PreferenceRecord):
            raise ValueError("method 'dpo' needs preference records (prompt, chosen, rejected)")
        prompt = r.prompt_dicts()
        chosen, rejected = (
            tokenize_conversation(
                tokenizer, [*prompt, {"role": "assistant", "content": r.answer(w), "train": True}], seq_len
            )
            for w in ("chosen", "rejected")
        )
        if chosen.trainable_tokens and rejected.trainable_tokens:
            pairs.append(PreferencePair(chosen, rejected))
    if not pairs:
        raise ValueError(f"no preference pair keeps answer tokens within seq_len={seq_len}")
    return pairs


def pack(examples: Sequence[Example], seq_len: int, seed: int = 0) -> list[PackedRow]:
    """Best-fit-decreasing bin packing of whole examples into rows of at most ``seq_len`` tokens.

    Written by hand: the libraries that pack (TRL, XTuner) pack inside their own trainers and
    datasets; this is the 20-line core. The rows are shuffled (seeded) so batches mix lengths.
    """
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i].input_ids))
    bins: list[list[int]] = []
    free: list[int] = []
    for i in order:
        n = len(examples[i].input_ids)
        best = min((b for b in range(len(bins)) if free[b] >= n), key=lambda b: free[b], default=None)
        if best is None:
            bins.append([i])
            free.append(seq_len - n)
        else:
            bins[best].append(i)
            free[best] -= n
    rows = []
    for members in bins:
        ids: list[int] = []
        labels: list[int] = []
        pos: list[int] = []
        for i in members:
            e = examples[i]
            ids += e.input_ids
            labels += [IGNORE_INDEX, *e.labels[1:]]  # nothing predicts across the boundary
            pos += range(len(e.input_ids))
        rows.append(PackedRow(ids, labels, pos))
    random.Random(seed).shuffle(rows)
    return rows


def collate_packed(
    rows: Sequence[PackedRow], pad_id: int, *, flatten: bool = False
) -> dict[str, torch.Tensor]:
    """The rows as one batch. ``flatten``: concatenated into a single (1, total) sequence with no
    padding at all (for packed attention, which finds the examples from the restarting positions);
    else padded to the longest row, the pads continuing as their own 'sequence' with no loss."""
    if flatten:
        return {
            "input_ids": torch.tensor([[t for r in rows for t in r.input_ids]], dtype=torch.long),
            "labels": torch.tensor([[t for r in rows for t in r.labels]], dtype=torch.long),
            "position_ids": torch.tensor([[t for r in rows for t in r.position_ids]], dtype=torch.long),
        }
    width = max(len(r.input_ids) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    pos = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r.input_ids)
        ids[i, :n] = torch.tensor(r.input_ids)
        labels[i, :n] = torch.tensor(r.labels)
        pos[i, :n] = torch.tensor(r.position_ids)
        pos[i, n:] = torch.arange(width - n)
    # No attention_mask on purpose: restarting position_ids are the boundaries (see module doc).
    return {"input_ids": ids, "labels": labels, "position_ids": pos}


def collate(examples: Sequence[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch with an attention mask (training needs no generation alignment)."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        mask[i, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def schedule(n_items: int, batch_size: int, steps: int, seed: int) -> list[list[int]]:
    """Which items each step trains on: seeded epoch shuffles, so a resumed run replays the same order."""
    rng = random.Random(seed)
    order: list[int] = []
    out = []
    for _ in range(steps):
        while len(order) < batch_size:
            epoch = list(range(n_items))
            rng.shuffle(epoch)
            order += epoch
        out.append(order[:batch_size])
        order = order[batch_size:]
    return out
