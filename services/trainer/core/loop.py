"""The training loop in plain torch: grad accumulation, clipping, AdamW + schedule, metrics per step."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from contracts.events import TrainSpec
from services.trainer.core.data import SeededSampler


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


def autocast_for(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    # bf16 autocast pays off on CUDA; on the CPU it is slower than fp32 for small models.
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_steps(
    model: torch.nn.Module,
    sampler: SeededSampler,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    spec: TrainSpec,
    *,
    start_step: int,
    device: torch.device,
    on_step: Callable[[StepMetrics], None],
    cancel: threading.Event | None = None,
) -> None:
    """Run optimizer steps ``start_step+1 .. spec.max_steps``; ``on_step`` sees each one (and may save)."""
    model.train()
    accum = spec.gradient_accumulation_steps
    for step in range(start_step + 1, spec.max_steps + 1):
        if cancel is not None and cancel.is_set():
            raise TrainingCancelled(f"cancelled before step {step}")
        started = time.perf_counter()
        loss_sum, tokens = 0.0, 0
        for _ in range(accum):
            batch = {k: v.to(device, non_blocking=True) for k, v in sampler.next_batch().items()}
            with autocast_for(device):
                out = model(**batch)
            (out.loss / accum).backward()
            loss_sum += float(out.loss.detach())
            tokens += int(batch["attention_mask"].sum())
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), spec.grad_clip))
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        elapsed = max(time.perf_counter() - started, 1e-9)
        on_step(StepMetrics(step, loss_sum / accum, lr, grad_norm, tokens / elapsed, tokens))
