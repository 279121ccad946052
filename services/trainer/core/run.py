"""One pretraining run end to end: data → tokenizer → packed sequences → model → loop → checkpoints.

The model is built from the spec, or continues an existing checkpoint (``init_from``, any family
``shared.hf_models`` opens: its tokenizer reused, its checkpoints saved in its layout).

Plain Python: the bus handler, the gRPC servicer and the ``puyu train`` command all call
``run_training``. A run lives in one folder; calling it again with the same folder resumes from
the latest saved state (and returns at once if the run already finished).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from contracts.events import TrainSpec
from services.trainer.core import checkpoint as ckpt
from services.trainer.core.data import (
    DatasetError,
    PackedDataset,
    SeededSampler,
    load_texts,
    map_tokens,
    split_documents,
    tokenize_to_memmap,
)
from services.trainer.core.engine import build_engine, has_cxx_compiler
from services.trainer.core.loop import ProgressFn, StepMetrics, evaluate, train_steps
from services.trainer.core.mfu import device_peak, mfu
from services.trainer.core.model import (
    TrainableModel,
    build_model,
    count_parameters,
    flops_per_token,
    load_model,
)
from services.trainer.core.pretrained import check_checkpoint, load_pretrained
from services.trainer.core.refusals import TrainConfigError
from services.trainer.core.tokenizer import load_tokenizer, train_bpe
from shared.artifacts import ArtifactStore
from shared.distributed import barrier, init_process_group, world

log = logging.getLogger(__name__)


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
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TrainConfigError(f"device {name!r} asked for, but this machine has no CUDA device")
    dev = torch.device(name)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", world().local_rank)  # one GPU per local rank
    return dev


def resolve(spec: TrainSpec, world_size: int = 1) -> TrainSpec:
    """The spec with derived fields filled: accumulation from global_batch_size, steps from max_tokens."""
    update: dict[str, Any] = {}
    if spec.global_batch_size is not None:
        per_step = spec.micro_batch_size * world_size
        if spec.global_batch_size % per_step:
            raise TrainConfigError(
                f"global_batch_size ({spec.global_batch_size}) is not a multiple of micro_batch_size "
                f"({spec.micro_batch_size}) x world size ({world_size})"
            )
        update["gradient_accumulation_steps"] = spec.global_batch_size // per_step
    accum = update.get("gradient_accumulation_steps", spec.gradient_accumulation_steps)
    if spec.max_tokens is not None:
        per_step_tokens = spec.micro_batch_size * accum * world_size * spec.seq_len
        update["max_steps"] = max(1, -(-spec.max_tokens // per_step_tokens))
    return spec.model_copy(update=update) if update else spec


def validate(spec: TrainSpec, world_size: int = 1) -> TrainSpec:
    """Checks beyond the pydantic model that need the whole spec; returns the resolved spec.

    With ``init_from`` the architecture is the checkpoint's: its folder is checked instead
    (``pretrained.check_checkpoint``: it exists, is supported, has weights and a tokenizer, and the
    spec contradicts none of it)."""
    if spec.init_from is not None:
        check_checkpoint(spec)
    else:
        _check_architecture(spec)
    spec = resolve(spec, world_size)
    if spec.warmup_steps >= spec.max_steps and spec.max_steps > 1:
        raise TrainConfigError(
            f"warmup_steps ({spec.warmup_steps}) must be below max_steps ({spec.max_steps})"
        )
    if spec.precision == "bf16" and not torch.cuda.is_available() and spec.zero_stage:
        raise TrainConfigError("precision bf16 with ZeRO needs a CUDA device")
    if spec.torch_compile == "on" and spec.zero_stage:
        raise TrainConfigError("torch_compile 'on' is not supported with ZeRO: use 'auto' or 'off'")
    if spec.torch_compile == "on" and not torch.cuda.is_available() and not has_cxx_compiler():
        raise TrainConfigError(
            "torch_compile 'on' on the CPU needs a C++ compiler (g++ or clang++) on PATH: install one "
            "or use 'auto'/'off'"
        )
    if spec.zero_stage and importlib.util.find_spec("deepspeed") is None:
        raise TrainConfigError(f"zero_stage {spec.zero_stage} needs DeepSpeed: pip install 'puyu[train]'")
    return spec


def _check_architecture(spec: TrainSpec) -> None:
    """The architecture of a model built from the spec."""
    arch = spec.architecture
    if arch.hidden_size % arch.num_attention_heads:
        raise TrainConfigError(
            f"hidden_size ({arch.hidden_size}) must be divisible by num_attention_heads ({arch.num_attention_heads})"
        )
    if (arch.hidden_size // arch.num_attention_heads) % 2:
        raise TrainConfigError("head dimension (hidden_size / num_attention_heads) must be even for RoPE")
    if spec.seq_len > arch.max_position_embeddings:
        raise TrainConfigError(
            f"seq_len ({spec.seq_len}) exceeds max_position_embeddings ({arch.max_position_embeddings})"
        )
    if arch.rope_scaling is not None:
        from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

        kind = arch.rope_scaling.get("rope_type", "default")
        if kind != "default" and kind not in ROPE_INIT_FUNCTIONS:
            raise TrainConfigError(
                f"rope_scaling: unknown rope_type {kind!r} (known: {sorted(ROPE_INIT_FUNCTIONS)})"
            )


def _noop_progress(stage: str, fraction: float, message: str = "", **metrics: float) -> None:
    return None


def _fetch_init_checkpoint(spec: TrainSpec, store: ArtifactStore) -> Path | None:
    """The local folder of ``init_from`` (downloaded once from a remote store), None without one."""
    if spec.init_from is None:
        return None
    try:
        return store.fetch(spec.init_from)
    except FileNotFoundError as exc:
        raise TrainConfigError(f"init_from {spec.init_from}: {exc}") from exc


def _tokenizer_for(
    spec: TrainSpec, store: ArtifactStore, point: ckpt.ResumePoint | None, init_dir: Path | None
) -> Any | None:
    """The run's own tokenizer when resuming, else the starting checkpoint's or the spec's folder;
    None: train one on the corpus."""
    if point is not None:  # token ids must not change under the weights
        return load_tokenizer(point.checkpoint)
    source = init_dir if init_dir is not None else spec.tokenizer_uri
    if source is None:
        return None
    try:
        return load_tokenizer(source if isinstance(source, Path) else store.fetch(source))
    except (OSError, ValueError) as exc:
        raise TrainConfigError(f"tokenizer of {spec.init_from or spec.tokenizer_uri}: {exc}") from exc


def _check_token_ids(spec: TrainSpec, dataset: PackedDataset, vocab_size: int) -> None:
    """A checkpoint's tokenizer may know tokens its embedding lacks (a tokenizer's extra special
    tokens): refused only when the data holds one."""
    largest = int(dataset.stream.max())
    if largest >= vocab_size:
        raise TrainConfigError(
            f"init_from {spec.init_from}: the data holds token id {largest}, beyond the model's "
            f"vocab_size ({vocab_size})"
        )


def _model_for(
    spec: TrainSpec, tokenizer: Any, point: ckpt.ResumePoint | None, init_dir: Path | None
) -> TrainableModel:
    """The weights to train: the run's last checkpoint, the checkpoint to start from, or new ones."""
    if spec.init_from is not None:
        folder = point.checkpoint if point is not None else init_dir
        assert folder is not None
        return load_pretrained(folder, spec.activation_checkpointing)
    if point is not None:
        return load_model(point.checkpoint, spec.activation_checkpointing)
    return build_model(spec.architecture, tokenizer, spec.seed, spec.activation_checkpointing)


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
    here = world()
    rank, local_rank, world_size = here.rank, here.local_rank, here.size
    spec, report = validate(job.spec, world_size), progress or _noop_progress
    # Ranks on one node share its cores (torchrun sets LOCAL_WORLD_SIZE).
    per_rank = (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    torch.set_num_threads(spec.num_threads or max(1, per_rank))
    dev = pick_device(device)
    init_process_group(dev.type)
    run_dir.mkdir(parents=True, exist_ok=True)
    point = ckpt.latest_resume_point(run_dir) if resume else None

    # Everything that can be refused is checked before the data is read and any weight exists.
    init_dir = _fetch_init_checkpoint(spec, store) if point is None else None
    tokenizer = _tokenizer_for(spec, store, point, init_dir)
    train_bin, eval_bin = run_dir / "data" / "train.bin", run_dir / "data" / "eval.bin"
    tokenizer_dir = run_dir / "data" / "tokenizer"
    prepare = point is None or not train_bin.exists()
    barrier()  # every rank has decided before the node's first rank rewrites the data
    if local_rank == 0 and prepare:
        report("data", 0.0, "reading datasets")
        texts, held_out = split_documents(
            load_texts(store, job.sources), spec.eval_fraction if spec.eval_interval else 0.0
        )
        if tokenizer is None:
            report(
                "tokenizer", 0.0, f"training a {spec.architecture.vocab_size}-token BPE on {len(texts)} docs"
            )
            tokenizer = train_bpe(texts, spec.architecture.vocab_size)
        report("data", 0.5, "tokenising")
        shutil.rmtree(run_dir / "data", ignore_errors=True)
        tokenize_to_memmap(tokenizer, texts, train_bin)
        tokenize_to_memmap(tokenizer, held_out, eval_bin)
        tokenizer.save_pretrained(tokenizer_dir)  # the other ranks load the one trained here
        del texts, held_out
    barrier()  # the other ranks read what the node's first rank wrote
    if tokenizer is None:
        tokenizer = load_tokenizer(tokenizer_dir)
    eos = tokenizer.eos_token_id if spec.document_attention else None
    dataset = PackedDataset(map_tokens(train_bin), spec.seq_len, tokenizer.pad_token_id, spec.seed)
    sampler = SeededSampler(
        dataset, spec.micro_batch_size, spec.seed, eos_id=eos, rank=rank, world_size=world_size
    )
    eval_tokens = map_tokens(eval_bin)
    eval_sampler = (
        SeededSampler(
            PackedDataset(eval_tokens, spec.seq_len, tokenizer.pad_token_id, spec.seed),
            spec.micro_batch_size,
            spec.seed,
            eos_id=eos,
        )
        if spec.eval_interval and len(eval_tokens)
        else None
    )

    model = _model_for(spec, tokenizer, point, init_dir)
    if spec.init_from is not None:
        _check_token_ids(spec, dataset, int(model.config.vocab_size))
    engine = build_engine(model, spec, dev)
    start_step = 0
    if point is not None:
        engine.load_state(point.state_dir, point.state)
        sampler.load_state_dict(point.state["sampler"])
        ckpt.restore_rng(point.state)
        start_step = point.step
        log.info("run %s: resuming from step %d", job.run_id, start_step)

    n_params = count_parameters(model)
    fpt = flops_per_token(model, spec.seq_len)
    peak = device_peak(dev, engine.bf16) * world_size  # re-measured before the final save
    history: list[StepMetrics] = list(point.state.get("history", [])) if point else []
    hyper = spec.model_dump(mode="json")
    totals = {
        "tokens": float(point.state.get("tokens_seen", 0)) if point else 0.0,
        "seconds": float(point.state.get("train_seconds", 0.0)) if point else 0.0,
    }
    evals: dict[str, float] = dict(point.state.get("evals", {})) if point else {}
    metrics_log = run_dir / "metrics.jsonl"

    def metrics_now() -> dict[str, float]:
        recent = history[-10:]
        tps = totals["tokens"] / totals["seconds"] if totals["seconds"] else 0.0
        out = {
            "loss": recent[-1].loss if recent else float("nan"),
            "loss_avg10": sum(m.loss for m in recent) / len(recent) if recent else float("nan"),
            "tokens_per_s": tps,
            "mfu": mfu(tps, fpt, peak),
            "tokens_seen": totals["tokens"],
            "train_seconds": totals["seconds"],
            "parameters": float(n_params),
            "sequences_per_epoch": float(len(dataset)),
            "epochs": sampler.samples_seen / len(dataset),
        }
        if evals:
            out["eval_loss"] = evals[max(evals, key=int)]
        return out

    def save(step: int, final: bool, announce: bool = True) -> Path:
        metrics = metrics_now()
        dest = ckpt.state_dir(run_dir, step)
        dest.mkdir(parents=True, exist_ok=True)
        engine_state = engine.save_state(dest)  # every rank: DeepSpeed saves its shards collectively
        path = ckpt.checkpoint_dir(run_dir, step)
        if rank == 0:
            lineage = {
                "run_id": job.run_id,
                "step": step,
                "final": final,
                "datasets": job.datasets,
                "spec": hyper,
                "metrics": metrics,
                "final_loss": metrics["loss"],
            }
            with engine.gathered():
                path = ckpt.save_checkpoint(run_dir, step, engine.module, tokenizer, lineage)
            extra = {
                "history": history,
                "tokens_seen": totals["tokens"],
                "train_seconds": totals["seconds"],
                "evals": evals,
            }
            ckpt.save_training_state(run_dir, step, engine_state, sampler.state_dict(), extra)
            if announce and on_checkpoint is not None:
                on_checkpoint(CheckpointInfo(step, path, final, metrics))
        barrier()
        return path

    last_t = [time.perf_counter()]

    def on_step(m: StepMetrics) -> None:
        history.append(m)
        now = time.perf_counter()
        totals["tokens"] += m.tokens * world_size
        totals["seconds"] += now - last_t[0]
        last_t[0] = now
        extra: dict[str, float] = {}
        if eval_sampler is not None and (m.step % spec.eval_interval == 0 or m.step == spec.max_steps):
            evals[str(m.step)] = extra["eval_loss"] = evaluate(engine, eval_sampler, 4, dev)
        if rank == 0:
            with metrics_log.open("a") as f:  # one line per step: the loss curve outlives the process
                f.write(json.dumps({**asdict(m), **extra}) + "\n")
        report(
            "train",
            m.step / spec.max_steps,
            f"step {m.step}/{spec.max_steps} loss {m.loss:.3f}",
            step=float(m.step),
            loss=m.loss,
            lr=m.lr,
            grad_norm=m.grad_norm,
            tokens_per_s=m.tokens_per_s * world_size,
            mfu=mfu(m.tokens_per_s * world_size, fpt, peak),
            **extra,
        )
        if m.step < spec.max_steps and spec.checkpoint_interval and m.step % spec.checkpoint_interval == 0:
            save(m.step, final=False)
        last_t[0] = time.perf_counter()  # saving is not training time

    if start_step < spec.max_steps:
        report(
            "train",
            start_step / spec.max_steps,
            f"{n_params / 1e6:.2f}M parameters, {len(dataset)} sequences of {spec.seq_len} tokens",
        )
        try:
            train_steps(
                engine, sampler, spec, start_step=start_step, device=dev, on_step=on_step, cancel=cancel
            )
        except Exception:
            done = history[-1].step if history else start_step
            if done > start_step:  # keep what was learned: the redelivered job resumes here
                save(done, final=False, announce=False)
            raise
        peak = device_peak(dev, engine.bf16, remeasure=True) * world_size
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
