"""One pretraining run end to end: data → tokenizer → packed sequences → model → loop → checkpoints.

Plain Python: the bus handler, the gRPC servicer and the ``puyu train`` command all call
``run_training``. A run lives in one folder; calling it again with the same folder resumes from
the latest saved state (and returns at once if the run already finished).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM

from contracts.events import TrainSpec
from services.trainer.core import checkpoint as ckpt
from services.trainer.core.data import DatasetError, PackedDataset, SeededSampler, load_texts, tokenize_stream
from services.trainer.core.loop import ProgressFn, StepMetrics, train_steps
from services.trainer.core.model import build_model, count_parameters
from services.trainer.core.optim import build_optimizer, build_scheduler
from services.trainer.core.tokenizer import load_tokenizer, train_bpe
from shared.artifacts import ArtifactStore

log = logging.getLogger(__name__)


class TrainConfigError(ValueError):
    """The request can never succeed as given (bad spec, unusable tokenizer or data)."""


@dataclass
class TrainJob:
    run_id: str
    spec: TrainSpec
    sources: list[str]  # manifest URIs, manifest.json paths, folders or JSONL files
    datasets: list[dict[str, Any]] = field(default_factory=list)  # lineage: DatasetRef dumps


@dataclass
class CheckpointInfo:
    step: int
    path: Path
    final: bool
    metrics: dict[str, float]


@dataclass
class TrainResult:
    run_id: str
    final_step: int
    checkpoint: Path
    metrics: dict[str, float]
    history: list[StepMetrics]
    resumed_from: int | None


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def validate(spec: TrainSpec) -> None:
    """Checks beyond the pydantic model that need the whole spec."""
    if spec.seq_len > spec.architecture.max_position_embeddings:
        raise TrainConfigError(
            f"seq_len ({spec.seq_len}) exceeds max_position_embeddings ({spec.architecture.max_position_embeddings})"
        )
    if spec.warmup_steps >= spec.max_steps and spec.max_steps > 1:
        raise TrainConfigError(
            f"warmup_steps ({spec.warmup_steps}) must be below max_steps ({spec.max_steps})"
        )


def _noop_progress(stage: str, fraction: float, message: str = "", **metrics: float) -> None:
    return None


def run_training(
    job: TrainJob,
    run_dir: Path,
    store: ArtifactStore,
    *,
    progress: ProgressFn | None = None,
    on_checkpoint: Callable[[CheckpointInfo], None] | None = None,
    cancel: threading.Event | None = None,
    device: str = "auto",
    resume: bool = True,
) -> TrainResult:
    spec, report = job.spec, progress or _noop_progress
    validate(spec)
    torch.set_num_threads(spec.num_threads or os.cpu_count() or 1)
    dev = pick_device(device)
    run_dir.mkdir(parents=True, exist_ok=True)
    point = ckpt.latest_resume_point(run_dir) if resume else None

    report("data", 0.0, "reading datasets")
    texts = load_texts(store, job.sources)
    if point is not None:  # the run's own tokenizer: token ids must not change under the weights
        tokenizer = load_tokenizer(point.checkpoint)
    elif spec.tokenizer_uri:
        try:
            tokenizer = load_tokenizer(store.fetch(spec.tokenizer_uri))
        except (OSError, ValueError) as exc:
            raise TrainConfigError(f"tokenizer {spec.tokenizer_uri}: {exc}") from exc
    else:
        report("tokenizer", 0.0, f"training a {spec.architecture.vocab_size}-token BPE on {len(texts)} docs")
        tokenizer = train_bpe(texts, spec.architecture.vocab_size)
    report("data", 0.5, "tokenising")
    dataset = PackedDataset(
        tokenize_stream(tokenizer, texts), spec.seq_len, tokenizer.pad_token_id, spec.seed
    )
    del texts
    sampler = SeededSampler(dataset, spec.micro_batch_size, spec.seed)

    if point is not None:
        model: torch.nn.Module = AutoModelForCausalLM.from_pretrained(point.checkpoint, dtype=torch.float32)
    else:
        model = build_model(spec.architecture, tokenizer, spec.seed)
    model = model.to(dev)
    optimizer = build_optimizer(model, spec)
    scheduler = build_scheduler(optimizer, spec)
    start_step = 0
    if point is not None:
        optimizer.load_state_dict(point.state["optimizer"])
        scheduler.load_state_dict(point.state["scheduler"])
        sampler.load_state_dict(point.state["sampler"])
        ckpt.restore_rng(point.state)
        start_step = point.step
        log.info("run %s: resuming from step %d", job.run_id, start_step)

    n_params = count_parameters(model)
    history: list[StepMetrics] = list(point.state.get("history", [])) if point else []
    hyper = spec.model_dump(mode="json")
    totals = {
        "tokens": float(point.state.get("tokens_seen", 0)) if point else 0.0,
        "seconds": float(point.state.get("train_seconds", 0.0)) if point else 0.0,
    }

    def metrics_now() -> dict[str, float]:
        recent = history[-10:]
        return {
            "loss": recent[-1].loss if recent else float("nan"),
            "loss_avg10": sum(m.loss for m in recent) / len(recent) if recent else float("nan"),
            "tokens_per_s": totals["tokens"] / totals["seconds"] if totals["seconds"] else 0.0,
            "tokens_seen": totals["tokens"],
            "train_seconds": totals["seconds"],
            "parameters": float(n_params),
            "sequences_per_epoch": float(len(dataset)),
            "epochs": sampler.samples_seen / len(dataset),
        }

    def save(step: int, final: bool, announce: bool = True) -> Path:
        metrics = metrics_now()
        lineage = {
            "run_id": job.run_id,
            "step": step,
            "final": final,
            "datasets": job.datasets,
            "spec": hyper,
            "metrics": metrics,
            "final_loss": metrics["loss"],
        }
        path = ckpt.save_checkpoint(run_dir, step, model, tokenizer, lineage)
        extra = {"history": history, "tokens_seen": totals["tokens"], "train_seconds": totals["seconds"]}
        ckpt.save_training_state(run_dir, step, optimizer, scheduler, sampler.state_dict(), extra)
        if announce and on_checkpoint is not None:
            on_checkpoint(CheckpointInfo(step, path, final, metrics))
        return path

    last_t = [time.perf_counter()]

    def on_step(m: StepMetrics) -> None:
        history.append(m)
        now = time.perf_counter()
        totals["tokens"] += m.tokens
        totals["seconds"] += now - last_t[0]
        last_t[0] = now
        report(
            "train",
            m.step / spec.max_steps,
            f"step {m.step}/{spec.max_steps} loss {m.loss:.3f}",
            step=float(m.step),
            loss=m.loss,
            lr=m.lr,
            tokens_per_s=m.tokens_per_s,
        )
        if m.step < spec.max_steps and spec.checkpoint_interval and m.step % spec.checkpoint_interval == 0:
            save(m.step, final=False)

    if start_step < spec.max_steps:
        report(
            "train",
            start_step / spec.max_steps,
            f"{n_params / 1e6:.2f}M parameters, {len(dataset)} sequences of {spec.seq_len} tokens",
        )
        try:
            train_steps(
                model,
                sampler,
                optimizer,
                scheduler,
                spec,
                start_step=start_step,
                device=dev,
                on_step=on_step,
                cancel=cancel,
            )
        except Exception:
            done = history[-1].step if history else start_step
            if done > start_step:  # keep what was learned: the redelivered job resumes here
                save(done, final=False, announce=False)
            raise
        final_path = save(spec.max_steps, final=True)
    else:  # finished before (a redelivery): announce the same final checkpoint again
        final_path = point.checkpoint if point else ckpt.checkpoint_dir(run_dir, spec.max_steps)
        if on_checkpoint is not None:
            on_checkpoint(CheckpointInfo(spec.max_steps, final_path, True, metrics_now()))
    report("done", 1.0, f"checkpoint {final_path}")
    return TrainResult(
        job.run_id, spec.max_steps, final_path, metrics_now(), history, point.step if point else None
    )


__all__ = ["CheckpointInfo", "DatasetError", "TrainConfigError", "TrainJob", "TrainResult", "run_training"]
