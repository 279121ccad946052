"""A tiny random Llama + byte-level BPE tokenizer in a Hugging Face folder, built in seconds.

Nothing is downloaded: the tokenizer is trained on the texts given (or on ``sentences()``), the
weights are random (``teach_reply`` trains a known answer into them).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

BOS, EOS, PAD = "<s>", "</s>", "<pad>"

# The gateway tests' prompts: "User: ...\nAssistant:", no end-of-turn token.
USER_ASSISTANT_TEMPLATE = (
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
    texts: Iterable[str] | None = None,
    *,
    vocab_size: int = 512,
    hidden_size: int = 64,
    layers: int = 2,
    max_positions: int = 256,
    seed: int = 0,
    chat_template: str | None = None,
    unk_token: str | None = None,
    add_bos: bool = False,
    initializer_range: float = 0.02,
    heads: int = 4,
    kv_heads: int = 2,
) -> Path:
    """Write a random-init LlamaForCausalLM (tied embeddings, ``heads`` attention heads and ``kv_heads``
    KV heads, 4 and 2 by default) and its tokenizer to ``dest``, loadable by the Auto* classes and
    ``shared.hf_models``.

    The tokenizer is a byte-level BPE trained on ``texts`` (default ``sentences()``) with the special
    tokens ``<s> </s> <pad>``; ``unk_token`` is put first and declared (as Llama 2 tokenizers do, a
    byte-level BPE never needs it); ``add_bos``: ``<s>`` is prepended when special tokens are asked
    for (what lm-evaluation-harness' ``add_bos_token=True`` relies on). ``initializer_range`` 0.2
    spreads the logits, so that greedy argmax is not decided by float noise."""
    dest = Path(dest)
    special_tokens = [*([unk_token] if unk_token else []), BOS, EOS, PAD]
    tok = Tokenizer(models.BPE(unk_token=unk_token))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(sentences() if texts is None else texts), trainer=trainer)
    if add_bos:
        bos_id = tok.token_to_id(BOS)
        tok.post_processor = processors.TemplateProcessing(
            single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, bos_id)]
        )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        **({"unk_token": unk_token} if unk_token else {}),
    )
    if chat_template:
        tokenizer.chat_template = chat_template

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=initializer_range,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    return dest


def build_serving_model(dest: Path, *, seed: int = 0, max_positions: int = 256, head_dim: int = 16) -> Path:
    """The gateway tests' model: ``build_tiny_model`` on ``sentences()`` with 320 tokens, the
    User/Assistant template and logits spread wide enough for greedy decoding to be stable.

    ``head_dim`` 32 (2 heads, 1 KV head) is a model vLLM's CPU build serves too: its attention has
    kernels for head sizes of 32 and up."""
    heads = 64 // head_dim
    return build_tiny_model(
        dest,
        vocab_size=320,
        max_positions=max_positions,
        seed=seed,
        chat_template=USER_ASSISTANT_TEMPLATE,
        initializer_range=0.2,
        heads=heads,
        kv_heads=max(1, heads // 2),
    )


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
