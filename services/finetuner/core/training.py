"""The training loop shared by every method: supervised (lora, qlora, full) and DPO, resumable.

Supervised steps minimise the next-token loss on labelled tokens (packed rows or padded examples).
DPO steps minimise ``-log σ(β·((π_c − ref_c) − (π_r − ref_r)))`` over summed answer log-probs; the
reference is the same network with the LoRA adapter switched off (peft's ``disable_adapter``), so no
second copy of the model is held. Hand-written rather than TRL's DPOTrainer: the loss is five
lines, and owning the loop keeps packing, resume and progress reporting the same for every method.

Data parallel (WORLD_SIZE > 1, ``engine`` wraps DDP or DeepSpeed): ``micro_batch_size`` is per rank;
the seeded schedule picks each step's global batch of ``micro_batch_size × world`` items, and each
rank trains on its slice (``shared.distributed.rank_share``). DDP averages gradients over ranks, so
each rank's supervised loss is its summed token loss over the *global* count of labelled tokens,
times the world size: the average is then the global batch's mean token loss, the update one
process would take on the whole batch. DPO averages over pairs, which every rank has equally many
of. Reported losses are the global batch's (summed over ranks); evaluation runs on every rank.
"""

from __future__ import annotations

import logging
import threading
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
from shared.distributed import all_reduce_sum, rank_share, world

log = logging.getLogger(__name__)
Progress = Callable[..., None]


class FinetuneCancelled(Exception):
    """The run was asked to stop (its cancel event): it saved its state where it could and ended."""


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


def sft_share(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(the loss this rank backpropagates, its share of the global mean) for a data-parallel step:
    summed token loss over the global labelled-token count (one all-reduce of a scalar), scaled by
    the world size that the gradient average divides by again. In a world of one: the mean, twice."""
    keep, targets = _next_token_targets(batch["labels"])
    count = all_reduce_sum(torch.tensor(float(targets.numel()), device=targets.device))
    summed = F.cross_entropy(_logits_at(model, batch, keep).float(), targets, reduction="sum")
    share = summed / count.clamp(min=1.0)
    return share * world().size, share.detach()


def sequence_logprobs(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum of log p(label token) over each row's labelled tokens."""
    keep, targets = _next_token_targets(batch["labels"])
    logits = _logits_at(model, batch, keep)
    logp = torch.gather(logits.float().log_softmax(-1), 1, targets.unsqueeze(-1)).squeeze(-1)
    rows = keep.nonzero()[:, 0]
    return torch.zeros(keep.shape[0], dtype=logp.dtype, device=logp.device).index_add(0, rows, logp)


def dpo_loss(
    model: Any,
    pairs: Sequence[PreferencePair],
    pad_id: int,
    beta: float,
    device: Any,
    reference_model: Any = None,
) -> tuple[torch.Tensor, int, float]:
    """The DPO loss of a batch of pairs, its token count and the share of pairs ranked right.
    ``reference_model``: the peft model whose adapter is switched off for the reference (``model``
    itself unless that is a DDP wrapper, which has no ``disable_adapter``)."""
    batch = _to(collate([p.chosen for p in pairs] + [p.rejected for p in pairs], pad_id), device)
    n = len(pairs)
    policy = sequence_logprobs(model, batch)
    ref = model if reference_model is None else reference_model
    with torch.no_grad(), ref.disable_adapter():
        reference = sequence_logprobs(ref, batch)
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
    """One optimizer step on this rank's micro-batch: (its share of the global batch's loss, detached
    and left on the device, summed over ranks when drained; its tokens)."""
    if spec.method == "dpo":
        loss, ntok, _ = dpo_loss(engine.forward, chunk, pad_id, spec.dpo_beta, device, engine.reference)
        share = loss.detach() / world().size
    else:
        batch, ntok = sft_batch(chunk, pad_id, flatten=flatten)
        loss, share = sft_share(engine.forward, _to(batch, device))
    engine.step(loss)
    return share, ntok


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
    cancel: threading.Event | None = None,
) -> TrainResult:
    """Train ``model`` in place for ``spec.max_steps`` steps over ``items``; resumes from ``state_dir``.

    ``engine`` (plain torch or DeepSpeed ZeRO, ``engine.build_engine``) takes the steps; the caller
    owns it (exports through it, then closes it). With several ranks every rank calls this with the
    same items, and with a ``progress`` on every rank or on none (losses are drained collectively).
    ``cancel`` set on any rank: every rank stops before the same next step (they agree on it with
    one all-reduce per step), saves the state and raises ``FinetuneCancelled``. Any other failure of
    several ranks saves nothing (the others may be inside a collective): the last periodic save stands.
    """
    started = time.perf_counter()
    torch.manual_seed(spec.seed)
    trainable, total = _count(model)
    forward = engine.forward
    flatten = packed_attention_active(model)
    me = world()
    plan = schedule(len(items), spec.micro_batch_size * me.size, spec.max_steps, spec.seed)

    point = run_state.load(state_dir, fingerprint) if state_dir else None
    start, losses, tokens_seen, extra_before = 0, [], 0, {}
    if point is not None and state_dir is not None:
        run_state.restore(point, engine, state_dir)
        start, losses, tokens_seen = point["step"], list(point["losses"]), int(point["tokens_seen"])
        extra_before = dict(point.get("eval_before", {}))
        log.info("resuming finetune from step %d", start)
    tokens_before = tokens_seen
    if extra_before:
        before, acc_before = extra_before["loss"], extra_before["acc"]
    else:
        before, acc_before = evaluate(engine.reference, held, spec, pad_id, device)

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
    # (loss share, tokens) per step, read back in one go: no host sync inside the step
    step_losses: list[torch.Tensor] = []

    def drain() -> None:
        nonlocal losses, tokens_seen
        step_loss, step_tokens = _drain(step_losses)
        losses += step_loss
        tokens_seen += step_tokens

    stopped = False  # every rank agreed to stop here: saving is safe
    try:
        for step in range(start + 1, spec.max_steps + 1):
            if _stop_agreed(cancel, device, me.size):
                stopped = True
                raise FinetuneCancelled(f"cancelled before step {step}/{spec.max_steps}")
            t0 = time.perf_counter()
            chunk = [items[i] for i in rank_share(plan[step - 1], me.rank, me.size)]
            loss, ntok = train_step(engine, chunk, spec, pad_id, device, flatten=flatten)
            step_losses.append(torch.stack([loss.float(), loss.new_tensor(float(ntok))]))
            train_seconds += time.perf_counter() - t0
            done = step
            if progress or (spec.checkpoint_interval and step % spec.checkpoint_interval == 0):
                drain()
            if spec.checkpoint_interval and step % spec.checkpoint_interval == 0:
                save(step)
            if progress:
                progress("train", step / spec.max_steps, f"step {step}/{spec.max_steps}", loss=losses[-1])
    except BaseException:
        if me.size == 1 or stopped:  # else other ranks may be inside a collective
            drain()
            save(done)  # keep what was learned: a rerun or redelivery resumes here
        raise
    drain()
    save(spec.max_steps)
    after, acc_after = evaluate(engine.reference, held, spec, pad_id, device)
    # every rank's tokens of this session (a resumed run's earlier steps took other seconds)
    extra = {"tokens_per_s": (tokens_seen - tokens_before) / train_seconds if train_seconds else 0.0}
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


def _stop_agreed(cancel: threading.Event | None, device: Any, world_size: int) -> bool:
    """Whether to stop now: this process's cancel flag, or any rank's when there are several."""
    wanted = cancel is not None and cancel.is_set()
    if world_size == 1:
        return wanted
    return bool(all_reduce_sum(torch.tensor([float(wanted)], device=device)).item() > 0)


def _drain(pending: list[torch.Tensor]) -> tuple[list[float], int]:
    """The pending steps' losses and their tokens, summed over ranks (one collective for all)."""
    rows = all_reduce_sum(torch.stack(pending)).tolist() if pending else []
    pending.clear()
    return [loss for loss, _ in rows], int(sum(tokens for _, tokens in rows))


def _count(model: Any) -> tuple[int, int]:
    # ZeRO-3 leaves each parameter an empty placeholder; its true size is ds_numel.
    def size(p: torch.nn.Parameter) -> int:
        return int(getattr(p, "ds_numel", p.numel()))

    trainable = sum(size(p) for p in model.parameters() if p.requires_grad)
    return trainable, sum(size(p) for p in model.parameters())
