"""Continued pretraining: training starts from an existing checkpoint (``TrainSpec.init_from``).

The checkpoint may be of any family ``shared.hf_models`` opens (Llama, Mistral, Qwen2/Qwen3, the
Qwen2-MoE and Mixtral mixtures of experts, InternLM2/InternLM3 without their remote code). It trains
as the transformers model that loader gives (``PretrainedLM``, with ``PuyuLlama``'s calling
convention, so the engines, the loop and the checkpoints treat both alike), in fp32 master weights,
and every checkpoint is saved in the layout the folder came in: an InternLM2 folder yields InternLM2
checkpoints that InternLM's own code loads. Packed documents attend only within themselves:
transformers derives that mask from the restarting position ids.

``check_checkpoint`` is the submit-time check: it reads only the folder's listing and config.json
(no weight), so a remote artifact URI is not downloaded to be refused.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import fsspec
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

from contracts.events import ModelArchitecture, TrainSpec
from services.trainer.core import kernels
from services.trainer.core.refusals import TrainConfigError
from shared.hf_models import SUPPORTED_TYPES, ModelFormat, UnsupportedModel, load_causal_lm, save_in_format

WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
# What a tokenizer folder holds: a fast tokenizer, a SentencePiece model (InternLM, Llama 2), or a
# byte-level BPE's vocabulary (Qwen's tokenizers without tokenizer.json).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


class PretrainedLM(nn.Module):
    """A transformers causal LM called as ``PuyuLlama`` is: ``(input_ids, labels, position_ids) ->
    (logits, loss)``, the loss the same next-token cross-entropy with the labels shifted inside."""

    def __init__(
        self, model: PreTrainedModel, fmt: ModelFormat, activation_checkpointing: bool = False
    ) -> None:
        super().__init__()
        self.hf = model
        self.format = fmt
        self.config = model.config
        if activation_checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        # No cache and no padding mask: transformers turns position ids that restart into a
        # block-diagonal (per-document) causal mask.
        logits = self.hf(input_ids=input_ids, position_ids=position_ids, use_cache=False).logits
        if labels is None:
            return logits, None
        targets = F.pad(labels[:, 1:], (0, 1), value=-100)
        loss = kernels.cross_entropy(logits.view(-1, logits.shape[-1]), targets.reshape(-1))
        return logits, loss

    def save(self, dest: Path, tokenizer: Any) -> None:
        """The weights (fp32: a resumed run continues from exactly them) and the tokenizer, in the
        layout of the folder the run started from."""
        save_in_format(self.hf, tokenizer, dest, self.format)


def load_pretrained(folder: Path, activation_checkpointing: bool = False) -> PretrainedLM:
    """The checkpoint in ``folder`` (the one to start from, or a checkpoint of the run when resuming)."""
    try:
        model, fmt = load_causal_lm(folder, dtype=torch.float32)
    except UnsupportedModel as exc:
        raise TrainConfigError(f"init_from: {exc}") from exc
    return PretrainedLM(model, fmt, activation_checkpointing)


# ----------------------------------------------------------------------------- submit-time check


def check_checkpoint(spec: TrainSpec) -> dict[str, Any]:
    """Refuse an ``init_from`` that cannot start this run; returns the checkpoint's config.json.

    The folder must exist and hold config.json of a supported ``model_type``, weights and a
    tokenizer; ``tokenizer_uri`` must be unset (the checkpoint's tokenizer is the one its weights
    learned); architecture fields the spec sets (other than their defaults) must equal the
    checkpoint's, and ``seq_len`` fit its positions.
    """
    uri = spec.init_from
    assert uri is not None
    if spec.tokenizer_uri:
        raise TrainConfigError(
            "init_from reuses the checkpoint's own tokenizer: tokenizer_uri must be unset "
            f"(got {spec.tokenizer_uri!r})"
        )
    try:
        fs, root = fsspec.core.url_to_fs(uri)
        if not fs.isdir(root):
            raise TrainConfigError(f"init_from {uri}: no such folder")
        names = {PurePosixPath(str(p)).name for p in fs.ls(root, detail=False)}
        if "config.json" not in names:
            raise TrainConfigError(f"init_from {uri}: no config.json, not a Hugging Face model folder")
        config = json.loads(fs.cat_file(f"{root.rstrip('/')}/config.json"))
    except (OSError, ValueError) as exc:
        if isinstance(exc, TrainConfigError):
            raise
        raise TrainConfigError(f"init_from {uri}: cannot be read: {exc}") from exc
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type not in SUPPORTED_TYPES:
        raise TrainConfigError(
            f"init_from {uri}: model_type {model_type!r} is not supported; "
            f"supported: {', '.join(sorted(SUPPORTED_TYPES))}"
        )
    if not names.intersection(WEIGHT_FILES):
        raise TrainConfigError(f"init_from {uri}: no weights (model.safetensors or pytorch_model.bin)")
    if not names.intersection(TOKENIZER_FILES):
        raise TrainConfigError(
            f"init_from {uri}: no tokenizer (one of {', '.join(TOKENIZER_FILES)}); continued pretraining "
            "needs the tokenizer the checkpoint was trained with"
        )
    contradictions = architecture_contradictions(spec.architecture, config)
    if contradictions:
        raise TrainConfigError(
            f"init_from {uri}: the spec's architecture contradicts the checkpoint's: "
            + "; ".join(contradictions)
            + " (leave architecture fields at their defaults to take the checkpoint's)"
        )
    positions = config.get("max_position_embeddings")
    if isinstance(positions, int) and spec.seq_len > positions:
        raise TrainConfigError(
            f"seq_len ({spec.seq_len}) exceeds the checkpoint's max_position_embeddings ({positions})"
        )
    return dict(config)


def _rope(config: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
    """(rope_theta, the scaling parameters) of a config.json, written either way transformers has
    (``rope_theta`` + ``rope_scaling``, or one ``rope_parameters``); ``type`` read as ``rope_type``."""
    parameters = dict(config.get("rope_parameters") or {})
    scaling = dict(config.get("rope_scaling") or {k: v for k, v in parameters.items() if k != "rope_theta"})
    if "type" in scaling:
        scaling.setdefault("rope_type", scaling.pop("type"))
    return config.get("rope_theta", parameters.get("rope_theta")), scaling


def architecture_contradictions(arch: ModelArchitecture, config: Mapping[str, Any]) -> list[str]:
    """Each architecture field set to other than its default whose value differs from the
    checkpoint's. Defaults cannot be told from unset values once a spec has crossed the bus (it is
    sent whole), so a default means "the checkpoint's"."""
    defaults = ModelArchitecture()
    theta, scaling = _rope(config)
    checkpoint: dict[str, Any] = {
        name: config.get(name)
        for name in (
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "max_position_embeddings",
            "vocab_size",
            "tie_word_embeddings",
        )
    }
    checkpoint["num_key_value_heads"] = config.get("num_key_value_heads") or config.get("num_attention_heads")
    checkpoint["rope_theta"] = theta
    out = []
    for name, value in checkpoint.items():
        asked = getattr(arch, name)
        if asked != getattr(defaults, name) and value is not None and asked != value:
            out.append(f"architecture.{name} is {asked!r}, the checkpoint's is {value!r}")
    if arch.rope_scaling:
        asked_scaling = dict(arch.rope_scaling)
        if "type" in asked_scaling:
            asked_scaling.setdefault("rope_type", asked_scaling.pop("type"))
        differing = {
            k: v
            for k, v in asked_scaling.items()
            if scaling.get(k, "default" if k == "rope_type" else None) != v
        }
        if differing:
            out.append(
                f"architecture.rope_scaling {arch.rope_scaling!r} differs from the checkpoint's {scaling or None!r}"
            )
    return out
