"""Outputs of a finetune: the PEFT adapter (adapter methods), the merged full model, and
lineage.json beside each. Both folders carry the tokenizer, so the chat template in use travels
with them and the merged folder loads with ``AutoModelForCausalLM`` / ``AutoTokenizer`` as is."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LINEAGE_FILE = "lineage.json"


@dataclass
class Exported:
    adapter_dir: Path | None
    model_dir: Path


def write_lineage(folder: Path, lineage: dict[str, Any]) -> Path:
    path = folder / LINEAGE_FILE
    path.write_text(json.dumps(lineage, indent=2, sort_keys=True, default=str))
    return path


def merge_adapter(base_dir: Path, adapter_dir: Path, out_dir: Path, tokenizer: Any = None) -> Path:
    """Fold a saved adapter into full-precision base weights (what QLoRA needs: its in-memory base
    is 4-bit, so merging there would bake quantisation error into the released model)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    out_dir.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out_dir)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
    return out_dir


def export(
    model: Any,
    tokenizer: Any,
    out_dir: Path,
    lineage: dict[str, Any],
    *,
    method: str,
    base_dir: Path,
) -> Exported:
    model_dir = out_dir / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    if method == "full":
        model.save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
        write_lineage(model_dir, lineage)
        return Exported(adapter_dir=None, model_dir=model_dir)

    adapter_dir = out_dir / "adapter"  # saved first: merging folds the LoRA weights away
    adapter_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(adapter_dir))
    tokenizer.save_pretrained(adapter_dir)
    write_lineage(adapter_dir, lineage)
    if method == "qlora":
        merge_adapter(base_dir, adapter_dir, model_dir, tokenizer)
    else:
        merged = model.merge_and_unload()
        merged.save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
    write_lineage(model_dir, lineage)
    return Exported(adapter_dir=adapter_dir, model_dir=model_dir)
