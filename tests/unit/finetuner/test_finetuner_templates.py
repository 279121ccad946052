from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from services.finetuner.core.templates import (
    IGNORE_INDEX,
    INTERNLM2_CHAT_TEMPLATE,
    ensure_chat_template,
    tokenize_conversation,
)

MESSAGES = [
    {"role": "system", "content": "You are a helpful atlas."},
    {"role": "user", "content": "Tell me about Aldoria."},
    {"role": "assistant", "content": "The capital of Aldoria is Velm."},
    {"role": "user", "content": "What is it known for?"},
    {"role": "assistant", "content": "Aldoria is known for its silk."},
]


def _runs(labels: list[int]) -> list[range]:
    runs, start = [], None
    for k, lab in enumerate([*labels, IGNORE_INDEX]):
        if lab != IGNORE_INDEX and start is None:
            start = k
        elif lab == IGNORE_INDEX and start is not None:
            runs.append(range(start, k))
            start = None
    return runs


def _check_mask(tok, expected_prompts: list[str], expected_answers: list[str]) -> None:  # type: ignore[no-untyped-def]
    ex = tokenize_conversation(tok, MESSAGES, max_length=1024)
    assert len(ex.labels) == len(ex.input_ids)
    runs = _runs(ex.labels)
    assert len(runs) == len(expected_answers)
    labeled = {k for r in runs for k in r}
    # Token by token: a label is either the token itself (assistant content) or -100 (everything else).
    for k, (tid, lab) in enumerate(zip(ex.input_ids, ex.labels, strict=True)):
        assert lab == (tid if k in labeled else IGNORE_INDEX), k
    # The labeled runs are exactly the assistant answers (with the end-of-turn marker) ...
    for run, answer in zip(runs, expected_answers, strict=True):
        assert tok.decode(ex.input_ids[run.start : run.stop]) == answer
    # ... and the unlabeled stretches are exactly the prompts.
    bounds = [0] + [b for r in runs for b in (r.start, r.stop)]
    prompts = [tok.decode(ex.input_ids[bounds[i] : bounds[i + 1]]) for i in range(0, len(bounds) - 1, 2)]
    assert prompts == expected_prompts


def test_mask_with_tokenizer_template(tiny_base: Path) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_base)
    assert "User:" in ensure_chat_template(tok)  # the demo template is kept
    _check_mask(
        tok,
        [
            "System: You are a helpful atlas.\nUser: Tell me about Aldoria.\nAssistant:",
            "User: What is it known for?\nAssistant:",
        ],
        [" The capital of Aldoria is Velm.</s>\n", " Aldoria is known for its silk.</s>\n"],
    )


def test_mask_with_internlm2_fallback(tiny_base_no_template: Path) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_base_no_template)
    assert not tok.chat_template
    assert ensure_chat_template(tok) == INTERNLM2_CHAT_TEMPLATE
    _check_mask(
        tok,
        [
            "<s><|im_start|>system\nYou are a helpful atlas.<|im_end|>\n"
            "<|im_start|>user\nTell me about Aldoria.<|im_end|>\n<|im_start|>assistant\n",
            "<|im_start|>user\nWhat is it known for?<|im_end|>\n<|im_start|>assistant\n",
        ],
        ["The capital of Aldoria is Velm.<|im_end|>\n", "Aldoria is known for its silk.<|im_end|>\n"],
    )


def test_truncation_keeps_alignment(tiny_base: Path) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_base)
    full = tokenize_conversation(tok, MESSAGES, max_length=1024)
    short = tokenize_conversation(tok, MESSAGES, max_length=10)
    assert short.input_ids == full.input_ids[:10] and short.labels == full.labels[:10]
    assert short.trainable_tokens == 0  # the first answer starts later: nothing to learn


def test_template_that_mangles_prefixes_is_refused(tiny_base: Path) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_base)
    # Renders the turn count first: a prefix renders differently from the whole conversation.
    tok.chat_template = "{{ messages|length }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    with pytest.raises(ValueError, match="prefix"):
        tokenize_conversation(tok, MESSAGES, max_length=64)
