"""The finetuner's core: base model folder + chat JSONL + spec -> adapter, merged model, lineage.

Plain Python, no bus or gRPC: the bus handler and the ``puyu finetune`` command both call
``run_finetune``. Requests this build cannot do are refused before anything is loaded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from contracts.events import FinetuneSpec
from services.finetuner.data import dataset_digest, load_records
from services.finetuner.export import export
from services.finetuner.methods import check_method, resolve_device
from services.finetuner.templates import ensure_chat_template
from services.finetuner.training import Progress, build_examples, train_lora

log = logging.getLogger(__name__)


@dataclass
class FinetuneOutcome:
    adapter_dir: Path
    model_dir: Path
    steps: int
    metrics: dict[str, float]
    lineage: dict[str, Any]


def check_base(base_dir: Path) -> None:
    if not (base_dir / "config.json").is_file():
        raise ValueError(f"{base_dir} is not a Hugging Face model folder (no config.json)")


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
) -> FinetuneOutcome:
    # Cheap checks first: a bad request costs no model load.
    check_method(spec.method)
    device = resolve_device(device)
    check_base(base_dir)
    records = load_records(dataset_path)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if num_threads:
        torch.set_num_threads(num_threads)
    if progress:
        progress("load", 0.0, f"loading base model from {base_dir}")
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    template_source = "tokenizer" if getattr(tokenizer, "chat_template", None) else "internlm2"
    ensure_chat_template(tokenizer)
    if tokenizer.pad_token_id is None:  # many base tokenizers ship without one
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)

    examples = build_examples(tokenizer, records, spec.seq_len)
    peft_model, result = train_lora(
        model, examples, spec, pad_id=tokenizer.pad_token_id, device=device, progress=progress
    )
    metrics = {
        "loss": result.final_loss,
        "eval_loss_before": result.eval_loss_before,
        "eval_loss_after": result.eval_loss_after,
        "examples": float(result.examples),
        "trainable_params": float(result.trainable_params),
        "train_seconds": result.seconds,
    }
    lineage = {
        "kind_of_run": "finetune",
        "method": spec.method,
        "base": base_ref or {"path": str(base_dir)},
        "dataset": {
            "uri": dataset_uri or str(dataset_path),
            "sha256": dataset_digest(dataset_path),
            "records": len(records),
            "examples_used": result.examples,
        },
        "hyperparameters": spec.model_dump(mode="json"),
        "lora_target_modules": result.target_modules,
        "chat_template": template_source,
        "metrics": metrics,
        "device": device,
        "created_at": datetime.now(UTC).isoformat(),
    }
    if progress:
        progress("export", 0.95, "saving adapter and merged model")
    exported = export(peft_model, tokenizer, out_dir, lineage)
    log.info(
        "finetune done: %d steps, loss %.4f -> %.4f",
        result.steps,
        result.eval_loss_before,
        result.eval_loss_after,
    )
    return FinetuneOutcome(exported.adapter_dir, exported.model_dir, result.steps, metrics, lineage)
