"""Optimizer and learning-rate schedule: AdamW; linear warm-up then cosine or WSD to a floor."""

from __future__ import annotations

import math

import torch

from contracts.events import TrainSpec


def lr_at(step: int, spec: TrainSpec) -> float:
    """Learning rate for optimizer step ``step`` (0-based)."""
    peak, floor = spec.learning_rate, min(spec.min_learning_rate, spec.learning_rate)
    if spec.warmup_steps and step < spec.warmup_steps:
        return peak * (step + 1) / spec.warmup_steps
    if spec.lr_schedule == "wsd":  # warm-up, stable at the peak, then a linear decay (MiniCPM)
        decay_steps = max(1, round(spec.decay_fraction * (spec.max_steps - spec.warmup_steps)))
        decay_start = spec.max_steps - decay_steps
        if step < decay_start:
            return peak
        return peak - (peak - floor) * min(1.0, (step - decay_start) / decay_steps)
    decay_steps = max(1, spec.max_steps - spec.warmup_steps)
    progress = min(1.0, (step - spec.warmup_steps) / decay_steps)
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * progress))


def param_groups(model: torch.nn.Module, spec: TrainSpec) -> list[dict[str, object]]:
    # Norm gains and biases (1-D tensors) are not decayed: shrinking them only hurts.
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": spec.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: torch.nn.Module, spec: TrainSpec) -> torch.optim.AdamW:
    # The fused kernel (CPU and CUDA since torch 2.4) updates every tensor in one pass.
    return torch.optim.AdamW(
        param_groups(model, spec), lr=spec.learning_rate, betas=(0.9, 0.95), eps=1e-8, fused=True
    )


def build_scheduler(optimizer: torch.optim.Optimizer, spec: TrainSpec) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_at(step, spec) / spec.learning_rate)
