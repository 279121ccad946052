"""A tiny Llama model + BPE tokenizer built in seconds, for tests and local smoke runs (no downloads)."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}User: {{ m['content'] }}\n"
    "{% elif m['role'] == 'assistant' %}Assistant: {{ m['content'] }}\n"
    "{% else %}{{ m['content'] }}\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)

_WORDS = (
    "the capital of aldoria is velm and the river runs north past the old mill where traders meet "
    "every spring to sell wool salt copper and bright glass beads from the eastern hills"
).split()


def sentences(n: int = 300) -> list[str]:
    """Deterministic pseudo-sentences over a small vocabulary (enough to train a BPE)."""
    out = []
    for i in range(n):
        k = 5 + i % 9
        out.append(" ".join(_WORDS[(i * 7 + j * 3) % len(_WORDS)] for j in range(k)).capitalize() + ".")
    return out


def build_tiny_model(
    dest: Path,
    *,
    seed: int = 0,
    vocab_size: int = 320,
    hidden: int = 64,
    layers: int = 2,
    max_positions: int = 256,
) -> Path:
    """Write a random-init tiny LlamaForCausalLM with a trained BPE tokenizer to ``dest``."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(sentences(), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(dest)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        # a wide init spreads the logits, so greedy argmax is not decided by float noise
        initializer_range=0.2,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(dest)
    return dest


def teach_reply(model_dir: Path, prompt: str, reply: str, *, steps: int = 300, lr: float = 3e-3) -> Path:
    """Train the model in ``model_dir`` in place until greedy decoding of ``prompt`` gives ``reply`` + EOS.

    Gives tests a real model whose answer is known (a tool call, a JSON object) without any download.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    r_ids = tok(reply, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ids = torch.tensor([p_ids + r_ids])
    labels = ids.clone()
    labels[0, : len(p_ids)] = -100
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for step in range(steps):
        loss = model(input_ids=ids, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 25 == 24:
            with torch.no_grad():
                pred = model(input_ids=ids).logits[0, len(p_ids) - 1 : -1].argmax(-1)
            if pred.tolist() == r_ids:
                break
    model.eval()
    model.save_pretrained(model_dir)
    return model_dir
