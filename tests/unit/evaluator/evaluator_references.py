"""Tiny random-weight model folders of every family the evaluator opens, each with an independent
reference to score and decode with: transformers' own class for the families it implements, and
for InternLM2/InternLM3 the original modeling code that XTuner ships (run as the folder's remote
code, here only) with the ``sentencepiece`` package as the tokenizer.

The builders and the XTuner/SentencePiece downloads are those of ``tests/unit/shared/conftest.py``,
loaded from its file under its own module name (a second module named ``conftest`` would clash).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    MixtralConfig,
    MixtralForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen2MoeConfig,
    Qwen2MoeForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from shared.hf_models import load_tokenizer


def _load_shared_references() -> ModuleType:
    name = "shared_hf_model_references"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, Path(__file__).parents[1] / "shared" / "conftest.py"
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


hf_references = _load_shared_references()

MAX_POSITIONS = 128  # every scored text is shorter: rolling windows and dynamic rope stay out of play
PAD, BOS, EOS = 0, 1, 2
TINY = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": MAX_POSITIONS,
    "pad_token_id": PAD,
    "bos_token_id": BOS,
    "eos_token_id": EOS,
}
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 500000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
}
NATIVE: dict[str, tuple[type[PreTrainedModel], Callable[[int], PretrainedConfig]]] = {
    "llama": (
        LlamaForCausalLM,
        lambda vocab: LlamaConfig(**TINY, vocab_size=vocab, rope_parameters=LLAMA3_ROPE),
    ),
    "mistral": (
        MistralForCausalLM,
        lambda vocab: MistralConfig(**TINY, vocab_size=vocab, sliding_window=None),
    ),
    "qwen2": (Qwen2ForCausalLM, lambda vocab: Qwen2Config(**TINY, vocab_size=vocab)),  # q/k/v biases
    "qwen3": (
        Qwen3ForCausalLM,
        lambda vocab: Qwen3Config(**TINY, vocab_size=vocab, head_dim=32),
    ),  # q/k norms
    "qwen2_moe": (
        Qwen2MoeForCausalLM,
        lambda vocab: Qwen2MoeConfig(
            **TINY,
            vocab_size=vocab,
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=32,
            shared_expert_intermediate_size=64,
        ),
    ),
    "mixtral": (
        MixtralForCausalLM,
        lambda vocab: MixtralConfig(**TINY, vocab_size=vocab, num_local_experts=4, num_experts_per_tok=2),
    ),
}
INTERNLM: dict[str, dict[str, Any]] = {
    # InternLM2.5's layout: grouped fused wqkv, dynamic NTK rope.
    "internlm2": {
        "model_type": "internlm2",
        "vocab_size": 512,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
        "max_position_embeddings": MAX_POSITIONS,
        "rms_norm_eps": 1e-5,
        "rope_theta": 1000000,
        "rope_scaling": {"type": "dynamic", "factor": 2.0},
        "bias": False,
        "tie_word_embeddings": False,
        "attn_implementation": "eager",
        "pad_token_id": EOS,
        "bos_token_id": BOS,
        "eos_token_id": EOS,
        "torch_dtype": "float32",
    },
    # InternLM3's: head_dim apart from hidden_size / heads, bf16 checkpoint.
    "internlm3": {
        "model_type": "internlm3",
        "vocab_size": 512,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 24,
        "max_position_embeddings": MAX_POSITIONS,
        "rms_norm_eps": 1e-5,
        "rope_theta": 50000000,
        "rope_scaling": {"rope_type": "dynamic", "factor": 6.0},
        "qkv_bias": False,
        "bias": False,
        "tie_word_embeddings": False,
        "pad_token_id": EOS,
        "bos_token_id": BOS,
        "eos_token_id": EOS,
        "torch_dtype": "bfloat16",
    },
}
ARCHITECTURES = [*NATIVE, *INTERNLM]


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


def train_byte_level_bpe(vocab_size: int = 400) -> Tokenizer:
    """A byte-level BPE tokenizer as Llama 3 and Qwen ship them: <pad> <s> </s> first."""
    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(hf_references.corpus()), trainer)
    assert [tokenizer.token_to_id(t) for t in ("<pad>", "<s>", "</s>")] == [PAD, BOS, EOS]
    return tokenizer


def build_native(folder: Path, architecture: str, tokenizer: Tokenizer) -> Reference:
    """A random-weight folder written by transformers itself; its class, loaded from the folder
    (eager attention), and its AutoTokenizer are the reference."""
    model_class, make_config = NATIVE[architecture]
    torch.manual_seed(0)
    model = model_class(make_config(tokenizer.get_vocab_size()))
    hf_references.randomize(model, seed=3)
    model.save_pretrained(folder)
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    ).save_pretrained(folder)
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
    hf_references.build_original(folder, modelings, INTERNLM[architecture], seed=7)
    (folder / "tokenizer.model").write_bytes(sentencepiece_model)
    processor = sentencepiece.SentencePieceProcessor(model_proto=sentencepiece_model)
    pieces = [processor.id_to_piece(i) for i in range(processor.get_piece_size())]
    tokenizer_class = {"internlm2": "InternLM2Tokenizer", "internlm3": "InternLM3Tokenizer"}[architecture]
    tokenizer_config = {**hf_references.internlm_tokenizer_config(pieces), "tokenizer_class": tokenizer_class}
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config), encoding="utf-8")
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
