"""Chat templates and the assistant-only label mask.

The tokenizer's own ``chat_template`` wins; without one we use the InternLM2 chat format
(``<|im_start|>role\\ncontent<|im_end|>\\n``). Labels are built per turn: each assistant turn's span
is found by rendering the conversation prefix (with the generation prompt) and the prefix including
the turn, so the mask follows whatever template is in use; every token outside those spans is -100.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

IGNORE_INDEX = -100

INTERNLM2_CHAT_TEMPLATE = (
    "{{ bos_token if bos_token else '' }}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def ensure_chat_template(tokenizer: Any) -> str:
    """Give the tokenizer a chat template when it has none; returns the template in use."""
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = INTERNLM2_CHAT_TEMPLATE
    return str(tokenizer.chat_template)


def _render(tokenizer: Any, messages: list[dict[str, Any]], generation_prompt: bool = False) -> str:
    plain = [{"role": m["role"], "content": m["content"]} for m in messages]  # templates see no flags
    return str(tokenizer.apply_chat_template(plain, tokenize=False, add_generation_prompt=generation_prompt))


def assistant_spans(tokenizer: Any, messages: list[dict[str, Any]]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of the trained assistant turns in it.

    A span runs from the end of the generation prompt to the end of the turn, so it includes the
    template's end-of-turn marker: the model learns to stop. A turn with ``"train": False`` (the
    per-turn loss flag) gets no span.
    """
    full = _render(tokenizer, messages)
    spans: list[tuple[int, int]] = []
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant" or not msg.get("train", True):
            continue
        upto = _render(tokenizer, messages[: i + 1])
        if not full.startswith(upto):
            raise ValueError("chat template renders a conversation prefix differently from the whole")
        prompt = _render(tokenizer, messages[:i], generation_prompt=True) if i else ""
        if upto.startswith(prompt):
            start = len(prompt)
        else:  # template ignores add_generation_prompt: locate the content after the previous turns
            before = _render(tokenizer, messages[:i]) if i else ""
            start = upto.find(msg["content"], len(_common_prefix(before, upto)))
            if start < 0:
                raise ValueError(f"chat template drops the content of message {i}")
        spans.append((start, len(upto)))
    return full, spans


def _common_prefix(a: str, b: str) -> str:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return a[:n]


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]

    @property
    def trainable_tokens(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE_INDEX)


def tokenize_conversation(tokenizer: Any, messages: list[dict[str, Any]], max_length: int) -> Example:
    """Token ids and labels (-100 outside assistant spans), truncated to max_length."""
    text, spans = assistant_spans(tokenizer, messages)
    # The template writes BOS itself where it wants one: no extra special tokens here.
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = list(enc["input_ids"])
    labels = [IGNORE_INDEX] * len(ids)
    for k, (start, end) in enumerate(enc["offset_mapping"]):
        if end > start and any(s <= start < e for s, e in spans):
            labels[k] = ids[k]
    return Example(input_ids=ids[:max_length], labels=labels[:max_length])


def tokenize_text(tokenizer: Any, text: str, max_length: int) -> Example:
    """Continued pretraining: BOS + text + EOS, loss on every token (the first one has no context)."""
    ids: list[int] = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if tokenizer.bos_token_id is not None:
        ids = [tokenizer.bos_token_id, *ids]
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    ids = ids[:max_length]
    return Example(input_ids=ids, labels=list(ids))
