"""The training loop shared by every method: supervised (lora, qlora, full) and DPO, resumable.

Supervised steps minimise the next-token loss on labelled tokens (packed rows or padded examples).
DPO steps minimise ``-log σ(β·((π_c − ref_c) − (π_r − ref_r)))`` over summed answer log-probs; the
reference is the same network with the LoRA adapter switched off (peft's ``disable_adapter``), so no
second copy of the model is held. Hand-written rather than TRL's DPOTrainer: the loss is five
lines, and owning the loop keeps packing, resume and progress reporting the same for every method.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from contracts.events import FinetuneSpec
from services.finetuner.core import state as run_state
from services.finetuner.core.attention import packed_attention_active
from services.finetuner.core.engine import TorchEngine
from services.finetuner.core.packing import (
    PackedRow,
    PreferencePair,
    collate,
    collate_packed,
    schedule,
)
from services.finetuner.core.templates import IGNORE_INDEX, Example

log = logging.getLogger(__name__)
Progress = Callable[..., None]


@dataclass
class TrainResult:
    steps: int
    losses: list[float]
    eval_loss_before: float
    eval_loss_after: float
    items: int
    tokens_seen: int
    trainable_params: int
    total_params: int
    seconds: float
    resumed_from: int | None = None
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def final_loss(self) -> float:
        # Mean of the last few steps: one micro-batch is noisy.
        tail = self.losses[-5:]
        return sum(tail) / len(tail) if tail else float("nan")


def _to(batch: dict[str, torch.Tensor], device: Any) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def sft_batch(
    items: Sequence[Example | PackedRow], pad_id: int, *, flatten: bool = False
) -> tuple[dict[str, torch.Tensor], int]:
    """The batch and its count of real (non-pad) tokens. ``flatten``: packed rows as one unpadded
    sequence (for a model running packed attention)."""
    if isinstance(items[0], PackedRow):
        rows: Sequence[PackedRow] = items  # type: ignore[assignment]
        return collate_packed(rows, pad_id, flatten=flatten), sum(len(r.input_ids) for r in rows)
    batch = collate(items, pad_id)  # type: ignore[arg-type]
    return batch, int(batch["attention_mask"].sum())


def _next_token_targets(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(positions whose next token is labelled, as a (B, T) mask; those labels, flattened)."""
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return keep, labels[:, 1:][keep[:, :-1]]


def _logits_at(model: Any, batch: dict[str, torch.Tensor], keep: torch.Tensor) -> torch.Tensor:
    """Logits (K, vocab) at the kept positions only. The vocabulary projection is the largest matmul
    of a small model and prompt tokens carry no loss, so it runs only where a label follows."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs, use_cache=False, logits_to_keep=keep).logits  # no cache: packed rows
    return logits[keep] if logits.dim() == 3 else logits  # 3-D: a model without logits_to_keep


def sft_loss(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy over labelled tokens: what transformers' own loss computes."""
    keep, targets = _next_token_targets(batch["labels"])
    return F.cross_entropy(_logits_at(model, batch, keep).float(), targets)


def sequence_logprobs(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum of log p(label token) over each row's labelled tokens."""
    keep, targets = _next_token_targets(batch["labels"])
    logits = _logits_at(model, batch, keep)
    logp = torch.gather(logits.float().log_softmax(-1), 1, targets.unsqueeze(-1)).squeeze(-1)
    rows = keep.nonzero()[:, 0]
    return torch.zeros(keep.shape[0], dtype=logp.dtype, device=logp.device).index_add(0, rows, logp)


def dpo_loss(
    model: Any, pairs: Sequence[PreferencePair], pad_id: int, beta: float, device: Any
) -> tuple[torch.Tensor, int, float]:
    """The DPO loss of a batch of pairs, its token count and the share of pairs ranked right."""
    batch = _to(collate([p.chosen for p in pairs] + [p.rejected for p in pairs], pad_id), device)
    n = len(pairs)
    policy = sequence_logprobs(model, batch)
    with torch.no_grad(), model.disable_adapter():
        reference = sequence_logprobs(model, batch)
    margin = (policy[:n] - reference[:n]) - (policy[n:] - reference[n:])
    loss = -F.logsigmoid(beta * margin).mean()
    return loss, int(batch["attention_mask"].sum()), float((margin > 0).float().mean())


@torch.no_grad()
def evaluate(
    model: Any, held: Sequence[Any], spec: FinetuneSpec, pad_id: int, device: Any
) -> tuple[float, float]:
    """(mean loss, DPO pair accuracy or nan) on held items, in eval mode."""
    was_training = model.training
    model.eval()
    total, weight, acc = 0.0, 0, 0.0
    bs = spec.micro_batch_size
    for i in range(0, len(held), bs):
        chunk = held[i : i + bs]
        if spec.method == "dpo":
            loss, _, right = dpo_loss(model, chunk, pad_id, spec.dpo_beta, device)
            total, weight, acc = (
                total + float(loss) * len(chunk),
                weight + len(chunk),
                acc + right * len(chunk),
            )
            continue
        batch = _to(collate(chunk, pad_id), device)
        n = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())  # HF averages per predicted token
        total, weight = total + float(sft_loss(model, batch)) * n, weight + n
    model.train(was_training)
    return total / max(weight, 1), (acc / max(weight, 1) if spec.method == "dpo" else float("nan"))


def train_step(
    engine: TorchEngine, chunk: Sequence[Any], spec: FinetuneSpec, pad_id: int, device: Any, *, flatten: bool
) -> tuple[torch.Tensor, int]:
    """One optimizer step on one micro-batch: (the loss, detached and left on the device; tokens)."""
    if spec.method == "dpo":
        loss, ntok, _ = dpo_loss(engine.forward, chunk, pad_id, spec.dpo_beta, device)
    else:
        batch, ntok = sft_batch(chunk, pad_id, flatten=flatten)
        loss = sft_loss(engine.forward, _to(batch, device))
    engine.step(loss)
    return loss.detach(), ntok


def train(
    model: Any,
    items: Sequence[Any],
    held: Sequence[Any],
    spec: FinetuneSpec,
    *,
    pad_id: int,
    device: Any = "cpu",
    state_dir: Path | None = None,
    fingerprint: str = "",
    progress: Progress | None = None,
    engine: TorchEngine,
) -> TrainResult:
    """Train ``model`` in place for ``spec.max_steps`` steps over ``items``; resumes from ``state_dir``.

    ``engine`` (plain torch or DeepSpeed ZeRO, ``engine.build_engine``) takes the steps; the caller
    owns it (exports through it, then closes it).
    """
    started = time.perf_counter()
    torch.manual_seed(spec.seed)
    trainable, total = _count(model)
    forward = engine.forward
    flatten = packed_attention_active(model)
    plan = schedule(len(items), spec.micro_batch_size, spec.max_steps, spec.seed)

    point = run_state.load(state_dir, fingerprint) if state_dir else None
    start, losses, tokens_seen, extra_before = 0, [], 0, {}
    if point is not None and state_dir is not None:
        run_state.restore(point, engine, state_dir)
        start, losses, tokens_seen = point["step"], list(point["losses"]), int(point["tokens_seen"])
        extra_before = dict(point.get("eval_before", {}))
        log.info("resuming finetune from step %d", start)
    if extra_before:
        before, acc_before = extra_before["loss"], extra_before["acc"]
    else:
        before, acc_before = evaluate(forward, held, spec, pad_id, device)

    saved = [start]

    def save(step: int) -> None:
        if state_dir is None or step <= saved[0]:  # nothing new since the last save
            return
        saved[0] = step
        run_state.save(
            state_dir,
            fingerprint,
            step,
            engine,
            losses=losses,
            tokens_seen=tokens_seen,
            eval_before={"loss": before, "acc": acc_before},
        )

    forward.train()
    train_seconds, done = 0.0, start
    step_losses: list[torch.Tensor] = []  # read back in one go: no host sync inside the step
    try:
        for step in range(start + 1, spec.max_steps + 1):
            t0 = time.perf_counter()
            chunk = [items[i] for i in plan[step - 1]]
            loss, ntok = train_step(engine, chunk, spec, pad_id, device, flatten=flatten)
            step_losses.append(loss)
            tokens_seen += ntok
            train_seconds += time.perf_counter() - t0
            done = step
            if progress or (spec.checkpoint_interval and step % spec.checkpoint_interval == 0):
                losses += _drain(step_losses)
            if spec.checkpoint_interval and step % spec.checkpoint_interval == 0:
                save(step)
            if progress:
                progress("train", step / spec.max_steps, f"step {step}/{spec.max_steps}", loss=losses[-1])
    except BaseException:
        losses += _drain(step_losses)
        save(done)  # keep what was learned: a rerun or redelivery resumes here
        raise
    losses += _drain(step_losses)
    save(spec.max_steps)
    after, acc_after = evaluate(forward, held, spec, pad_id, device)
    extra = {"tokens_per_s": tokens_seen / train_seconds if train_seconds else 0.0}
    if spec.method == "dpo":
        extra |= {"eval_pair_accuracy_before": acc_before, "eval_pair_accuracy_after": acc_after}
    return TrainResult(
        steps=spec.max_steps,
        losses=losses,
        eval_loss_before=before,
        eval_loss_after=after,
        items=len(items),
        tokens_seen=tokens_seen,
        trainable_params=trainable,
        total_params=total,
        seconds=time.perf_counter() - started,
        resumed_from=start if point is not None else None,
        extra=extra,
    )


def _drain(pending: list[torch.Tensor]) -> list[float]:
    values = torch.stack(pending).tolist() if pending else []
    pending.clear()
    return values


def _count(model: Any) -> tuple[int, int]:
    # ZeRO-3 leaves each parameter an empty placeholder; its true size is ds_numel.
    def size(p: torch.nn.Parameter) -> int:
        return int(getattr(p, "ds_numel", p.numel()))

    trainable = sum(size(p) for p in model.parameters() if p.requires_grad)
    return trainable, sum(size(p) for p in model.parameters())
