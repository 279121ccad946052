"""Packed attention (per-example SDPA, no 4-D mask) is exact: the same logits as each example run
alone, the same loss and gradients as transformers' own block-diagonal mask."""

from __future__ import annotations

import copy
import itertools
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from contracts.events import FinetuneSpec, LoraSpec
from services.finetuner.core import load_dataset
from services.finetuner.core.attention import (
    PACKED_ATTENTION,
    restore_default_attention,
    segment_lengths,
    use_packed_attention,
)
from services.finetuner.core.methods import wrap
from services.finetuner.core.packing import build_examples, collate, collate_packed, pack
from services.finetuner.core.templates import IGNORE_INDEX
from services.finetuner.core.training import sft_loss


@pytest.fixture
def examples(tiny_base: Path, chat_file: Path) -> list:  # type: ignore[type-arg]
    tok = AutoTokenizer.from_pretrained(tiny_base)
    return build_examples(tok, load_dataset(chat_file).records, 96)


@pytest.fixture
def packed_model(tiny_base: Path) -> torch.nn.Module:
    model = AutoModelForCausalLM.from_pretrained(tiny_base).eval()
    assert model.config.num_key_value_heads < model.config.num_attention_heads  # GQA is covered
    assert use_packed_attention(model) and model.config._attn_implementation == PACKED_ATTENTION
    return model


def test_segment_lengths_follow_restarting_positions() -> None:
    pos = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3], [0, 1, 2, 3, 4, 5, 6, 0, 1]])
    assert segment_lengths(pos) == [[3, 2, 4], [7, 2]]
    assert segment_lengths(torch.arange(5)) == [[5]]


@pytest.mark.parametrize("flatten", [True, False])
def test_packed_logits_and_loss_equal_each_example_alone(
    packed_model: torch.nn.Module,
    examples: list,  # type: ignore[type-arg]
    flatten: bool,
) -> None:
    rows = pack(examples[:9], 256, seed=0)
    assert len(rows) >= 2 and all(r.position_ids.count(0) >= 2 for r in rows[:2])
    batch = collate_packed(rows[:2], pad_id=0, flatten=flatten)
    if flatten:  # one unpadded sequence; every example start (row starts too) carries no label
        assert batch["input_ids"].shape == (1, len(rows[0].input_ids) + len(rows[1].input_ids))
        assert (batch["labels"][batch["position_ids"] == 0] == IGNORE_INDEX).all()
    total, count = 0.0, 0
    with torch.no_grad():
        logits = packed_model(**batch, use_cache=False).logits.reshape(-1, packed_model.config.vocab_size)
        width = batch["input_ids"].shape[1]
        offset = 0
        for k, row in enumerate(rows[:2]):
            base = offset if flatten else k * width
            starts = [i for i, p in enumerate(row.position_ids) if p == 0] + [len(row.input_ids)]
            for a, b in itertools.pairwise(starts):
                labels = torch.tensor([row.labels[a:b]])
                alone = packed_model(input_ids=torch.tensor([row.input_ids[a:b]]), labels=labels)
                torch.testing.assert_close(logits[base + a : base + b], alone.logits[0], atol=1e-5, rtol=1e-4)
                n = int((labels[0, 1:] != IGNORE_INDEX).sum())
                total, count = total + float(alone.loss) * n, count + n
            offset += len(row.input_ids)
        assert float(sft_loss(packed_model, batch)) == pytest.approx(total / count, rel=1e-4)


def test_loss_and_gradients_match_transformers_mask(tiny_base: Path, examples: list) -> None:  # type: ignore[type-arg]
    """LoRA gradients through packed attention + label-only logits equal those of the stock path
    (transformers' 4-D block-diagonal mask and its own loss over full logits)."""
    spec = FinetuneSpec(lora=LoraSpec(r=4, alpha=8, dropout=0.0))
    base = AutoModelForCausalLM.from_pretrained(tiny_base)
    torch.manual_seed(0)
    stock = wrap(copy.deepcopy(base), spec)
    for name, p in stock.named_parameters():  # non-zero B, so gradients reach every LoRA matrix
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)
    ours = copy.deepcopy(stock)
    assert use_packed_attention(ours)
    rows = pack(examples[:12], 256, seed=1)[:3]

    stock_loss = stock(**collate_packed(rows, pad_id=0), use_cache=False).loss
    stock_loss.backward()
    our_loss = sft_loss(ours, collate_packed(rows, pad_id=0, flatten=True))
    our_loss.backward()
    assert float(our_loss) == pytest.approx(float(stock_loss), rel=1e-5)
    grads = dict(stock.named_parameters())
    for name, p in ours.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
            torch.testing.assert_close(p.grad, grads[name].grad, atol=1e-6, rtol=1e-4)


def test_padded_batches_and_restore(packed_model: torch.nn.Module, examples: list) -> None:  # type: ignore[type-arg]
    """A padded batch (evaluation, DPO) goes through the padding mask; the label-only loss equals
    transformers' own; switching back leaves a stock SDPA model."""
    batch = collate(examples[:4], pad_id=0)
    assert int(batch["attention_mask"].sum()) < batch["attention_mask"].numel()  # there is padding
    with torch.no_grad():
        ours = sft_loss(packed_model, batch)
        theirs = packed_model(**batch, use_cache=False).loss
        restore_default_attention(packed_model)
        stock = packed_model(**batch, use_cache=False).loss
    assert packed_model.config._attn_implementation == "sdpa"
    assert float(ours) == pytest.approx(float(theirs), rel=1e-5)
    assert float(ours) == pytest.approx(float(stock), rel=1e-5)


def test_only_known_exact_architectures_switch() -> None:
    """A sliding window longer than any sequence is no window at all; a shorter one keeps the model
    on transformers' own mask, and so does an architecture not known to be plain causal attention."""
    from transformers import GPT2Config, GPT2LMHeadModel, MistralConfig, MistralForCausalLM

    config = MistralConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        sliding_window=16,
    )
    mistral = MistralForCausalLM(config).eval()
    assert not use_packed_attention(mistral, max_len=64) and mistral.config._attn_implementation == "sdpa"
    assert use_packed_attention(mistral, max_len=16)
    ids = torch.randint(0, 64, (1, 26))
    pos = torch.tensor([list(range(10)) + list(range(16))])
    with torch.no_grad():
        packed = mistral(input_ids=ids, position_ids=pos, use_cache=False).logits
        restore_default_attention(mistral)
        stock = mistral(input_ids=ids, position_ids=pos, use_cache=False).logits
        torch.testing.assert_close(packed, stock, atol=1e-5, rtol=1e-4)
        assert use_packed_attention(mistral, max_len=16)
        with pytest.raises(ValueError, match="longer than the sliding window"):
            mistral(input_ids=ids, position_ids=torch.tensor([list(range(26))]), use_cache=False)

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=4, vocab_size=64))
    assert not use_packed_attention(gpt2, max_len=16) and gpt2.config._attn_implementation != PACKED_ATTENTION
