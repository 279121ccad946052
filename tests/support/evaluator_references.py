"""The folders of ``model_references`` with an independent reference to score and decode with, for
the evaluator's tests: transformers' own class and AutoTokenizer for the families it implements,
and for InternLM2/InternLM3 the original modeling code that XTuner ships (run as the folder's remote
code, here only) with the ``sentencepiece`` package as the tokenizer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch
from tokenizers import Tokenizer
from transformers import AutoTokenizer

from shared.hf_models import load_tokenizer
from tests.support import hf_folders as hf_references
from tests.support import model_references
from tests.support.model_references import (
    ARCHITECTURES,
    BOS,
    EOS,
    INTERNLM,
    MAX_POSITIONS,  # every scored text is shorter: rolling windows and dynamic rope stay out of play
    NATIVE,
    train_byte_level_bpe,
)

__all__ = [
    "ARCHITECTURES",
    "INTERNLM",
    "Reference",
    "build_internlm",
    "build_native",
    "hf_references",
    "train_byte_level_bpe",
]


@dataclass
class Reference:
    """An independent implementation of a folder's model and tokenizer, in fp32."""

    model: torch.nn.Module
    encode: Callable[[str], list[int]]  # no special tokens added
    decode: Callable[[list[int]], str]  # special tokens skipped
    bos: int
    eos: int

    def logprobs(self, ids: list[int]) -> torch.Tensor:
        """log p(next token) at every position of one unpadded sequence, without a KV cache."""
        assert len(ids) <= MAX_POSITIONS
        with torch.no_grad():
            logits = self.model(torch.tensor([ids]), use_cache=False).logits[0]
        return torch.log_softmax(logits.float(), dim=-1)

    def loglikelihood(self, context: str, continuation: str) -> tuple[float, bool]:
        """lm-evaluation-harness's scoring: trailing context whitespace moves to the continuation,
        the pair is tokenized jointly (the context's tokens its prefix), BOS first; the sum of the
        continuation's log-probabilities and whether each of its tokens is the argmax."""
        spaces = len(context) - len(context.rstrip())
        if spaces and context.strip():
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        ctx = [self.bos, *self.encode(context)]
        whole = [self.bos, *self.encode(context + continuation)]
        cont = whole[len(ctx) :] if whole[: len(ctx)] == ctx else self.encode(continuation)
        span = self.logprobs(ctx + cont)[len(ctx) - 1 : -1]
        targets = torch.tensor(cont)
        picked = span.gather(-1, targets.unsqueeze(-1))
        return float(picked.sum()), bool((span.argmax(-1) == targets).all())

    def rolling(self, text: str) -> tuple[float, int]:
        """Every token of the text after BOS scored on all before it: (sum of logprobs, tokens)."""
        ids = [self.bos, *self.encode(text)]
        scores = self.logprobs(ids)[:-1].gather(-1, torch.tensor(ids[1:]).unsqueeze(-1))
        return float(scores.sum()), len(ids) - 1

    def greedy(self, prompt: str, max_new_tokens: int, stop: list[str]) -> str:
        """Greedy decoding the plain way (the whole sequence every step), ended by EOS, cut at ``stop``."""
        ids = [self.bos, *self.encode(prompt)]
        new: list[int] = []
        for _ in range(max_new_tokens):
            token = int(self.logprobs(ids + new)[-1].argmax())
            if token == self.eos:
                break
            new.append(token)
        text = self.decode(new)
        cut = min([i for i in (text.find(s) for s in stop) if i != -1], default=len(text))
        return text[:cut]


def build_native(folder: Path, architecture: str, tokenizer: Tokenizer) -> Reference:
    """A random-weight folder written by transformers itself; its class, loaded from the folder
    (eager attention), and its AutoTokenizer are the reference."""
    model_class = NATIVE[architecture][0]
    model_references.write_native(folder, architecture, tokenizer, seed=3)
    reference = model_class.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager")
    # transformers' own tokenizer for the family (for qwen2/qwen3 it applies Qwen's own split
    # pattern and NFC, whatever the folder's tokenizer.json says)
    tokenizer_reference = AutoTokenizer.from_pretrained(folder)
    return Reference(
        model=reference.eval(),
        encode=lambda text: list(tokenizer_reference(text, add_special_tokens=False)["input_ids"]),
        decode=lambda ids: str(tokenizer_reference.decode(ids, skip_special_tokens=True)),
        bos=BOS,
        eos=EOS,
    )


def build_internlm(
    folder: Path, architecture: str, modelings: Path, sentencepiece: ModuleType, sentencepiece_model: bytes
) -> Reference:
    """A random-weight folder written by XTuner's original InternLM code, with a SentencePiece
    tokenizer as InternLM ships it; the original code and ``sentencepiece`` are the reference."""
    model_references.build_internlm(folder, architecture, modelings, sentencepiece, sentencepiece_model)
    processor = sentencepiece.SentencePieceProcessor(model_proto=sentencepiece_model)
    # Generated ids are decoded as the evaluator decodes them: a random model emits lone byte-fallback
    # pieces, which SentencePiece and the tokenizers library turn into different replacement
    # characters (real text decodes alike: tests/unit/shared/test_hf_models_tokenizer.py).
    decoder = load_tokenizer(folder)
    return Reference(
        model=hf_references.load_original(folder),
        encode=lambda text: list(processor.encode(text)),
        decode=lambda ids: str(decoder.decode(ids, skip_special_tokens=True)),
        bos=processor.bos_id(),
        eos=processor.eos_id(),
    )
