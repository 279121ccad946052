"""The training loop: micro batches → one optimizer step through the engine; metrics per step."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.distributed as dist

from contracts.events import TrainSpec
from services.trainer.core.data import SeededSampler
from services.trainer.core.engine import TorchEngine


class ProgressFn(Protocol):
    def __call__(self, stage: str, fraction: float, message: str = "", **metrics: float) -> None: ...


class TrainingCancelled(Exception):
    """The run was asked to stop; its state was saved so that the same run id resumes."""


@dataclass
class StepMetrics:
    step: int  # 1-based: the number of optimizer steps done
    loss: float
    lr: float
    grad_norm: float
    tokens_per_s: float
    tokens: int


def train_steps(
    engine: TorchEngine,
    sampler: SeededSampler,
    spec: TrainSpec,
    *,
    start_step: int,
    device: torch.device,
    on_step: Callable[[StepMetrics], None],
    cancel: threading.Event | None = None,
) -> None:
    """Run optimizer steps ``start_step+1 .. spec.max_steps``; ``on_step`` sees each one (and may save)."""
    engine.model.train()
    accum = spec.gradient_accumulation_steps
    for step in range(start_step + 1, spec.max_steps + 1):
        if _stop_requested(cancel, device):
            raise TrainingCancelled(f"cancelled before step {step}")
        started = time.perf_counter()
        losses: list[torch.Tensor] = []
        tokens = 0
        for micro in range(accum):
            batch = {k: v.to(device, non_blocking=True) for k, v in sampler.next_batch().items()}
            lr = engine.lr()  # before the step: the rate this step trains with
            losses.append(engine.forward_backward(batch, accum, last=micro == accum - 1))
            tokens += int((batch["labels"] != -100).sum())
        grad_norm = engine.step()
        loss = float(torch.stack(losses).mean())  # one device sync per step, not per micro batch
        elapsed = max(time.perf_counter() - started, 1e-9)
        on_step(StepMetrics(step, loss, lr, grad_norm, tokens / elapsed, tokens))


def _stop_requested(cancel: threading.Event | None, device: torch.device) -> bool:
    """Whether any rank was asked to stop. Ranks agree on it (one tiny all-reduce a step): were one
    rank to stop a step before another, the other would wait in its next collective for ever."""
    flag = cancel is not None and cancel.is_set()
    if cancel is None or not dist.is_initialized() or dist.get_world_size() == 1:
        return flag
    vote = torch.tensor([int(flag)], device=device if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(vote, op=dist.ReduceOp.MAX)
    return bool(vote.item())


@torch.no_grad()
def evaluate(engine: TorchEngine, sampler: SeededSampler, batches: int, device: torch.device) -> float:
    """Mean loss over the first ``batches`` held-out batches (the same ones at every evaluation)."""
    model = engine.eval_model
    model.eval()
    sampler.samples_seen = 0
    total = 0.0
    for _ in range(batches):
        batch = {k: v.to(device) for k, v in sampler.next_batch().items()}
        _, loss = model(batch["input_ids"], batch["labels"], batch.get("position_ids"))
        assert loss is not None
        total += float(loss)
    model.train()
    return total / batches
