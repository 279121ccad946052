"""The LoRA training loop: examples in, a trained PEFT model and its loss curve out."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from peft import LoraConfig, PeftModel, TaskType, get_peft_model

from contracts.events import FinetuneSpec, LoraSpec
from services.finetuner.data import ChatRecord
from services.finetuner.templates import IGNORE_INDEX, Example, tokenize_conversation

log = logging.getLogger(__name__)
Progress = Callable[..., None]


@dataclass
class TrainResult:
    steps: int
    losses: list[float]
    eval_loss_before: float
    eval_loss_after: float
    examples: int
    trainable_tokens: int
    trainable_params: int
    total_params: int
    target_modules: list[str]
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def final_loss(self) -> float:
        # Mean of the last few steps: one micro-batch is noisy.
        tail = self.losses[-5:]
        return sum(tail) / len(tail)


def build_examples(tokenizer: Any, records: Sequence[ChatRecord], seq_len: int) -> list[Example]:
    examples = [tokenize_conversation(tokenizer, r.as_dicts(), seq_len) for r in records]
    kept = [e for e in examples if e.trainable_tokens > 0]
    if not kept:
        raise ValueError(f"no example has assistant tokens within seq_len={seq_len}")
    return kept


def collate(examples: Sequence[Example], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):  # right padding: training needs no generation alignment
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        mask[i, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def lora_config(spec: LoraSpec, model: torch.nn.Module) -> LoraConfig:
    """peft's LoraConfig for the spec, restricted to target modules the model actually has."""
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    present = [m for m in spec.target_modules if m in names]
    if not present:
        raise ValueError(f"none of the LoRA target modules {spec.target_modules} exist in this model")
    missing = sorted(set(spec.target_modules) - set(present))
    if missing:
        log.warning("LoRA target modules not in this model, skipped: %s", missing)
    return LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=present,
    )


@torch.no_grad()
def mean_loss(
    model: torch.nn.Module, examples: Sequence[Example], pad_id: int, device: str, batch_size: int
) -> float:
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    for i in range(0, len(examples), batch_size):
        batch = {k: v.to(device) for k, v in collate(examples[i : i + batch_size], pad_id).items()}
        out = model(**batch)
        # HF averages over predicted tokens of the batch; weight batches by their token count.
        n = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        total += float(out.loss) * n
        tokens += n
    model.train(was_training)
    return total / max(tokens, 1)


def train_lora(
    model: torch.nn.Module,
    examples: list[Example],
    spec: FinetuneSpec,
    *,
    pad_id: int,
    device: str = "cpu",
    progress: Progress | None = None,
    eval_examples: int = 32,
) -> tuple[PeftModel, TrainResult]:
    started = time.perf_counter()
    torch.manual_seed(spec.seed)
    rng = random.Random(spec.seed)
    config = lora_config(spec.lora, model)
    peft_model = get_peft_model(model, config)  # type: ignore[arg-type]
    peft_model.to(device)
    trainable, total = peft_model.get_nb_trainable_parameters()
    held = examples[:eval_examples]
    before = mean_loss(peft_model, held, pad_id, device, spec.micro_batch_size)

    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=spec.learning_rate, weight_decay=0.0)
    warmup = max(1, spec.max_steps // 10)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))

    order: list[int] = []
    losses: list[float] = []
    peft_model.train()
    for step in range(1, spec.max_steps + 1):
        if len(order) < spec.micro_batch_size:  # reshuffle per epoch, seeded
            epoch = list(range(len(examples)))
            rng.shuffle(epoch)
            order += epoch
        idx, order = order[: spec.micro_batch_size], order[spec.micro_batch_size :]
        batch = {k: v.to(device) for k, v in collate([examples[i] for i in idx], pad_id).items()}
        loss = peft_model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if progress:
            progress("train", step / spec.max_steps, f"step {step}/{spec.max_steps}", loss=losses[-1])

    after = mean_loss(peft_model, held, pad_id, device, spec.micro_batch_size)
    result = TrainResult(
        steps=spec.max_steps,
        losses=losses,
        eval_loss_before=before,
        eval_loss_after=after,
        examples=len(examples),
        trainable_tokens=sum(e.trainable_tokens for e in examples),
        trainable_params=int(trainable),
        total_params=int(total),
        target_modules=sorted(config.target_modules or []),
        seconds=time.perf_counter() - started,
    )
    return peft_model, result
