"""Outputs of a finetune: the PEFT adapter, the merged full model, and lineage.json beside each."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peft import PeftModel

LINEAGE_FILE = "lineage.json"


@dataclass
class Exported:
    adapter_dir: Path
    model_dir: Path


def write_lineage(folder: Path, lineage: dict[str, Any]) -> Path:
    path = folder / LINEAGE_FILE
    path.write_text(json.dumps(lineage, indent=2, sort_keys=True, default=str))
    return path


def export(peft_model: PeftModel, tokenizer: Any, out_dir: Path, lineage: dict[str, Any]) -> Exported:
    """Save the adapter first (merging folds the LoRA weights away), then the merged model.

    Both folders carry the tokenizer, so the chat template in use travels with them and the merged
    folder is loadable by ``AutoModelForCausalLM`` / ``AutoTokenizer`` as is.
    """
    adapter_dir, model_dir = out_dir / "adapter", out_dir / "model"
    adapter_dir.mkdir(parents=True, exist_ok=True)
    model_dir.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(str(adapter_dir))
    tokenizer.save_pretrained(adapter_dir)
    write_lineage(adapter_dir, lineage)

    merged = peft_model.merge_and_unload()
    merged.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    write_lineage(model_dir, lineage)
    return Exported(adapter_dir=adapter_dir, model_dir=model_dir)
