"""One finetune: base model folder + data file + spec -> adapter, merged model, lineage.

The service (through ``Finetuner``) and the ``puyu finetune`` command both call ``run_finetune``.
The base folder may hold any family ``shared.hf_models`` opens; the merged model is saved in the
layout it came in (``export``). The request is checked first (``validate``: device, method, ZeRO,
base folder, data), so one that can never succeed is refused before the model is loaded. A run
lives in ``out_dir``; calling again with the same folder and job resumes.

Under a launcher (torchrun, srun: WORLD_SIZE > 1) every rank calls ``run_finetune`` with the same
arguments: each joins the process group (gloo on CPU, NCCL on CUDA, one GPU per local rank), reads
and packs the whole data file (the same items everywhere), trains on its slice of each global batch
(``training``), and rank 0 alone writes the adapter, merged model and lineage while the others wait.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from contracts.events import FinetuneSpec
from services.finetuner.core.attention import restore_default_attention, use_packed_attention
from services.finetuner.core.data import Dataset, dataset_digest
from services.finetuner.core.engine import build_engine
from services.finetuner.core.export import Exported, export
from services.finetuner.core.methods import load_base, wrap
from services.finetuner.core.packing import build_examples, build_pairs, pack
from services.finetuner.core.refusals import InvalidInput
from services.finetuner.core.templates import ensure_chat_template
from services.finetuner.core.training import Progress, TrainResult, train
from services.finetuner.core.validation import validate
from shared.distributed import barrier, process_group, world
from shared.hf_models import UnsupportedModel, load_tokenizer

log = logging.getLogger(__name__)
HELD_OUT = 32  # items scored before and after training (loss / DPO pair accuracy)


@dataclass
class FinetuneOutcome:
    adapter_dir: Path | None
    model_dir: Path
    steps: int
    metrics: dict[str, float]
    lineage: dict[str, Any]
    losses: list[float]  # one per optimizer step


def run_finetune(
    base_dir: Path,
    dataset_path: Path,
    spec: FinetuneSpec,
    out_dir: Path,
    *,
    base_ref: dict[str, Any] | None = None,
    dataset_uri: str | None = None,
    device: str = "auto",
    num_threads: int | None = None,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
) -> FinetuneOutcome:
    """Finetune; ``cancel`` set stops the run before its next step (``FinetuneCancelled``)."""
    valid = validate(spec, device=device, base_dir=base_dir, dataset=dataset_path)
    assert valid.data is not None  # a data file was given
    device, data = valid.device, valid.data
    digest = dataset_digest(dataset_path)

    import torch

    if num_threads:
        torch.set_num_threads(num_threads)
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    with process_group(device.split(":")[0]) as me:
        if me.size > 1:
            # Losses are drained collectively when progress is reported: every rank reports or
            # none; rank 0's reports are the run's.
            progress = progress if me.main and progress else _quiet
        return _finetune(
            base_dir,
            dataset_path,
            spec,
            out_dir,
            data=data,
            digest=digest,
            device=device,
            base_ref=base_ref,
            dataset_uri=dataset_uri,
            progress=progress,
            cancel=cancel,
        )


def _finetune(
    base_dir: Path,
    dataset_path: Path,
    spec: FinetuneSpec,
    out_dir: Path,
    *,
    data: Dataset,
    digest: str,
    device: str,
    base_ref: dict[str, Any] | None,
    dataset_uri: str | None,
    progress: Progress | None,
    cancel: threading.Event | None,
) -> FinetuneOutcome:
    import torch

    main, world_size = world().main, world().size
    if progress:
        progress("load", 0.0, f"loading base model from {base_dir}")
    try:
        tokenizer = load_tokenizer(base_dir)
    except UnsupportedModel as exc:
        raise InvalidInput(str(exc)) from exc
    template_source = "tokenizer" if getattr(tokenizer, "chat_template", None) else "internlm2"
    ensure_chat_template(tokenizer)
    if tokenizer.pad_token_id is None:  # many base tokenizers ship without one
        tokenizer.pad_token = tokenizer.eos_token

    items: list[Any]
    if spec.method == "dpo":
        items = list(build_pairs(tokenizer, data.records, spec.seq_len))
        held: list[Any] = items[:HELD_OUT]
    else:
        examples = build_examples(tokenizer, data.records, spec.seq_len)
        held = examples[:HELD_OUT]
        items = list(pack(examples, spec.seq_len, spec.seed)) if spec.packing else examples
    torch.manual_seed(spec.seed)  # LoRA's initial weights: a rerun (or resume) starts identically
    base, fmt = load_base(base_dir, spec, device)
    packed_attention = use_packed_attention(
        base, spec.seq_len
    )  # per-example attention, no 4-D mask (attention.py)
    model = wrap(base, spec, fmt)
    fingerprint = hashlib.sha256(
        json.dumps([spec.model_dump(mode="json"), digest, str(base_ref or base_dir)]).encode()
    ).hexdigest()
    engine = build_engine(model, spec, device)
    try:
        result = train(
            model,
            items,
            held,
            spec,
            pad_id=tokenizer.pad_token_id,
            device=device,
            state_dir=out_dir / "state",
            fingerprint=fingerprint,
            progress=progress,
            engine=engine,
            cancel=cancel,
        )
        if progress:
            progress("export", 0.95, "saving adapter and merged model")
        metrics = _metrics(result, data, packed_attention)
        lineage = {
            "kind_of_run": "finetune",
            "method": spec.method,
            "base": base_ref or {"path": str(base_dir)},
            "base_format": fmt.model_type,
            "dataset": {
                "uri": dataset_uri or str(dataset_path),
                "sha256": digest,
                "format": data.format,
                "records": len(data.records),
            },
            "hyperparameters": spec.model_dump(mode="json"),
            "lora_target_modules": _lora_targets(model),
            "chat_template": template_source,
            "metrics": metrics,
            "resumed_from_step": result.resumed_from,
            "device": device,
            "world_size": world_size,
            "created_at": datetime.now(UTC).isoformat(),
        }
        restore_default_attention(model)  # exported folders load with stock transformers settings
        with engine.gathered():  # ZeRO-3: the full parameters (every rank gathers), for saving and merging
            if main:
                exported = export(
                    model, tokenizer, out_dir, lineage, method=spec.method, base_dir=base_dir, fmt=fmt
                )
        barrier()  # the other ranks end once rank 0's outputs are written
        if not main:  # where rank 0 wrote them
            adapter = out_dir / "adapter" if spec.method != "full" else None
            exported = Exported(adapter_dir=adapter, model_dir=out_dir / "model")
    finally:
        engine.close()
    log.info(
        "finetune (%s) done: %d steps, eval loss %.4f -> %.4f",
        spec.method,
        result.steps,
        result.eval_loss_before,
        result.eval_loss_after,
    )
    return FinetuneOutcome(
        exported.adapter_dir, exported.model_dir, result.steps, metrics, lineage, result.losses
    )


def _quiet(stage: str, fraction: float, message: str = "", **metrics: float) -> None:
    """The progress of ranks other than 0: nothing to say."""


def _metrics(result: TrainResult, data: Dataset, packed_attention: bool) -> dict[str, float]:
    return {
        "loss": result.final_loss,
        "eval_loss_before": result.eval_loss_before,
        "eval_loss_after": result.eval_loss_after,
        "examples": float(len(data.records)),
        "train_items": float(result.items),
        "tokens_seen": float(result.tokens_seen),
        "trainable_params": float(result.trainable_params),
        "train_seconds": result.seconds,
        "packed_attention": float(packed_attention),
        **result.extra,
    }


def _lora_targets(model: Any) -> list[str]:
    config = getattr(model, "peft_config", {}).get("default")
    return sorted(config.target_modules or []) if config is not None else []
