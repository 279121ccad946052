"""The tokenizer: a byte-level BPE trained on the corpus, or an existing Hugging Face tokenizer folder."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from shared import hf_models
from shared.hf_models import UnsupportedModel
from shared.samples import CHAT_TEMPLATE

BOS, EOS, PAD, UNK = "<s>", "</s>", "<pad>", "<unk>"
SPECIAL_TOKENS = [BOS, EOS, PAD, UNK]


def train_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> PreTrainedTokenizerFast:
    """Byte-level BPE (no unknown bytes), ``<s>`` prepended to every encoded text, HF-wrapped.

    A run of digits is never merged with the space or word before it: a number gets the same tokens
    wherever it stands (``"12"`` after a word and a space, after a quote, at a line's start), so a
    small model can copy it, e.g. from a question into a tool call, instead of learning a second
    token for each number.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=False), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return wrap(tok)


def wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        model_max_length=1_000_000,
    )
    hf.chat_template = CHAT_TEMPLATE
    return hf


def load_tokenizer(path: str | Path) -> Any:
    """An existing tokenizer folder (any ``shared.hf_models`` opens, InternLM's SentencePiece ones
    without their remote code); it must be a fast tokenizer with an eos token."""
    try:
        tok = hf_models.load_tokenizer(path)
    except UnsupportedModel as exc:
        raise ValueError(str(exc)) from exc
    if getattr(tok, "backend_tokenizer", None) is None:
        raise ValueError(f"{path}: the trainer needs a fast (tokenizers-backed) tokenizer")
    if tok.eos_token_id is None:
        raise ValueError(f"{path}: the tokenizer has no eos token")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok
