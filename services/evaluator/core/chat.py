"""Prompts for chat models, placed as OpenCompass's chat configs place them.

A chat model is asked in turns, not with a text to continue: the task's system prompt is a system
turn (OpenCompass's ``begin=[dict(role="SYSTEM", ...)]``), every few-shot example is an earlier
user turn (its prompt) answered by an assistant turn (its target), and the sample's prompt is the
last user turn; the model's chat template renders them and opens the assistant's turn.
"""

from __future__ import annotations

import hashlib

from services.evaluator.core.loaders import Dataset, Sample
from services.evaluator.core.tasks import CHAT_OUTPUT_TYPES, TaskConfig

Message = dict[str, str]
PLAIN_FORMAT = "plain"


def build_prompt(task: TaskConfig, dataset: Dataset, sample: Sample) -> str:
    """The plain-text prompt (base models): few-shot examples, then the sample, joined."""
    shots = [
        task.prompt_template.format(**ex) + task.fewshot_target_template.format(**ex)
        for ex in dataset.fewshot_for(sample, task.num_fewshot)
    ]
    return task.fewshot_separator.join([*shots, task.prompt_template.format(**sample)])


def chat_messages(task: TaskConfig, dataset: Dataset, sample: Sample) -> list[Message]:
    messages: list[Message] = []
    if task.system_prompt:
        messages.append({"role": "system", "content": task.system_prompt})
    for shot in dataset.fewshot_for(sample, task.num_fewshot):
        messages.append({"role": "user", "content": task.prompt_template.format(**shot)})
        messages.append({"role": "assistant", "content": task.fewshot_target_template.format(**shot).strip()})
    messages.append({"role": "user", "content": task.prompt_template.format(**sample)})
    return messages


def uses_chat(task: TaskConfig, chat_format: str | None) -> bool:
    """Whether the task's prompts go through the model's chat template (it has one, the task allows)."""
    return bool(chat_format) and task.chat == "auto" and task.output_type in CHAT_OUTPUT_TYPES


def template_id(template: str) -> str:
    """A chat template's identity in cache keys and version hashes."""
    return "chat:" + hashlib.sha256(template.encode()).hexdigest()[:16]


def effective_version(task_hash: str, *parts: str | None) -> str:
    """The task's hash extended by what else decides its answers (the chat template, the judge, the
    opponent): a result is only ever reused, or compared, under the same ones."""
    extra = [p for p in parts if p]
    if not extra:
        return task_hash
    return hashlib.sha256("\n".join([task_hash, *extra]).encode()).hexdigest()
