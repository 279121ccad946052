"""Outputs of a finetune: the PEFT adapter (adapter methods), the merged full model, and
lineage.json beside each. Both folders carry the tokenizer, so the chat template in use travels
with them.

The merged model is saved in the layout its base came in (``shared.hf_models.save_in_format``): a
Llama, Qwen or Mistral folder as transformers writes it, an InternLM2/InternLM3 folder as InternLM's
own code reads it (its modeling and tokenizer code copied from the base). The adapter names the
modules of the model as puyu loads it (Llama's names for InternLM bases, see ``methods``): it applies
to the base opened through ``shared.hf_models``, which is what ``merge_adapter`` does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.hf_models import ModelFormat, load_causal_lm, save_in_format

LINEAGE_FILE = "lineage.json"
TOKENIZER_CONFIG = "tokenizer_config.json"


@dataclass
class Exported:
    adapter_dir: Path | None
    model_dir: Path


def write_lineage(folder: Path, lineage: dict[str, Any]) -> Path:
    path = folder / LINEAGE_FILE
    path.write_text(json.dumps(lineage, indent=2, sort_keys=True, default=str))
    return path


def save_model(model: Any, tokenizer: Any, out_dir: Path, fmt: ModelFormat) -> Path:
    """The model and tokenizer in ``fmt``'s layout, with the chat template the finetune used."""
    save_in_format(model, tokenizer, out_dir, fmt)
    if tokenizer is not None and fmt.converted:
        _keep_chat_template(out_dir, tokenizer)
    return out_dir


def _keep_chat_template(folder: Path, tokenizer: Any) -> None:
    """An InternLM folder's tokenizer files are the base's, copied: when the finetune used a chat
    template the base did not declare (the default one), it is written into the copied config."""
    template = getattr(tokenizer, "chat_template", None)
    config_file = folder / TOKENIZER_CONFIG
    if not template or not config_file.is_file():
        return
    config = json.loads(config_file.read_text(encoding="utf-8"))
    if config.get("chat_template") != template:
        config["chat_template"] = template
        config_file.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def merge_adapter(base_dir: Path, adapter_dir: Path, out_dir: Path, tokenizer: Any = None) -> Path:
    """Fold a saved adapter into full-precision base weights and save the result in the base's
    layout (what QLoRA needs: its in-memory base is 4-bit, so merging there would bake quantisation
    error into the released model)."""
    import torch
    from peft import PeftModel

    base, fmt = load_causal_lm(base_dir, dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    out_dir.mkdir(parents=True, exist_ok=True)
    return save_model(merged, tokenizer, out_dir, fmt)


def export(
    model: Any,
    tokenizer: Any,
    out_dir: Path,
    lineage: dict[str, Any],
    *,
    method: str,
    base_dir: Path,
    fmt: ModelFormat,
) -> Exported:
    model_dir = out_dir / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    if method == "full":
        save_model(model, tokenizer, model_dir, fmt)
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
        save_model(model.merge_and_unload(), tokenizer, model_dir, fmt)
    write_lineage(model_dir, lineage)
    return Exported(adapter_dir=adapter_dir, model_dir=model_dir)
