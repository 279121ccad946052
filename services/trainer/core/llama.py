"""puyu's training-time Llama: the same maths as ``transformers``' LlamaForCausalLM, laid out for speed.

Why not train ``LlamaForCausalLM`` itself: the fused q/k/v and gate/up projections (two matmuls per
layer fewer), SDPA with ``is_causal`` or a document mask built once per batch for all layers, and
one dispatch point for the fused kernels (``kernels``) are what make the trainer faster than a plain
HF training loop. Weights convert both ways with ``to_hf_state_dict`` / ``from_hf_state_dict``, so
checkpoints are plain HF Llama folders (InternEvo keeps its own model the same way).
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from services.trainer.core import kernels
from services.trainer.core.attention import attention


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.rms_norm(x, self.weight, self.eps)


class Attention(nn.Module):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.n_heads: int = cfg.num_attention_heads
        self.n_kv: int = cfg.num_key_value_heads or cfg.num_attention_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.qkv = nn.Linear(cfg.hidden_size, (self.n_heads + 2 * self.n_kv) * self.head_dim, bias=False)
        self.o = nn.Linear(self.n_heads * self.head_dim, cfg.hidden_size, bias=False)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        b, t, _ = x.shape
        d = self.head_dim
        q, k, v = self.qkv(x).split([self.n_heads * d, self.n_kv * d, self.n_kv * d], dim=-1)
        q = q.view(b, t, self.n_heads, d).transpose(1, 2)
        k = k.view(b, t, self.n_kv, d).transpose(1, 2)
        v = v.view(b, t, self.n_kv, d).transpose(1, 2)
        q, k = kernels.rotary(q, k, cos, sin)
        y = attention(q, k, v, mask, gqa=self.n_kv != self.n_heads)
        return self.o(y.transpose(1, 2).reshape(b, t, self.n_heads * d))


class MLP(nn.Module):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.inter = cfg.intermediate_size
        self.gate_up = nn.Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=False)
        self.down = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).split(self.inter, dim=-1)
        return self.down(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin, mask)
        return x + self.mlp(self.mlp_norm(x))


def document_mask(position_ids: torch.Tensor, always: bool = False) -> torch.Tensor | None:
    """Block-diagonal causal mask [B, 1, T, T] from position ids that restart at each document.

    None when no row holds a second document (then SDPA's own causal path is used), unless ``always``:
    under torch.compile that data-dependent test would split the graph.
    """
    starts = position_ids == 0
    if not always and not bool(starts[:, 1:].any()):
        return None
    doc = starts.cumsum(-1)
    t = position_ids.shape[-1]
    causal = torch.ones(t, t, dtype=torch.bool, device=position_ids.device).tril()
    return (doc[:, :, None] == doc[:, None, :]).logical_and(causal).unsqueeze(1)


class PuyuLlama(nn.Module):
    def __init__(self, cfg: LlamaConfig, activation_checkpointing: bool = False) -> None:
        super().__init__()
        self.config = cfg
        self.activation_checkpointing = activation_checkpointing
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.embed.weight
        self.rotary = LlamaRotaryEmbedding(cfg)  # HF's: the same RoPE (and scaling) as inference
        self.apply(self._init)

    def _init(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(logits or hidden-less loss path, loss). Labels are shifted inside, as in HF."""
        b, t = input_ids.shape
        mask = None
        if position_ids is None:
            position_ids = torch.arange(t, device=input_ids.device).expand(b, t)
        else:
            mask = document_mask(position_ids, always=torch.compiler.is_compiling())
        x = self.embed(input_ids)
        cos, sin = self.rotary(x, position_ids)
        for block in self.blocks:
            if self.activation_checkpointing and self.training:
                x = checkpoint(block, x, cos, sin, mask, use_reentrant=False)
            else:
                x = block(x, cos, sin, mask)
        logits = self.lm_head(self.norm(x))
        if labels is None:
            return logits, None
        # Shift the labels, not the logits: no copy of the [B, T, V] logits.
        targets = F.pad(labels[:, 1:], (0, 1), value=-100)
        loss = kernels.cross_entropy(logits.view(-1, logits.shape[-1]), targets.reshape(-1))
        return logits, loss


# ------------------------------------------------------------------------------ HF conversion


def to_hf_state_dict(model: PuyuLlama) -> dict[str, torch.Tensor]:
    """The weights under LlamaForCausalLM's names (q/k/v and gate/up split back apart)."""
    cfg = model.config
    d = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    nq, nkv = cfg.num_attention_heads * d, (cfg.num_key_value_heads or cfg.num_attention_heads) * d
    out: dict[str, torch.Tensor] = {"model.embed_tokens.weight": model.embed.weight}
    blocks = cast(list[Block], list(model.blocks))
    for i, blk in enumerate(blocks):
        p = f"model.layers.{i}."
        q, k, v = blk.attn.qkv.weight.split([nq, nkv, nkv], dim=0)
        gate, up = blk.mlp.gate_up.weight.split(cfg.intermediate_size, dim=0)
        out |= {
            p + "self_attn.q_proj.weight": q,
            p + "self_attn.k_proj.weight": k,
            p + "self_attn.v_proj.weight": v,
            p + "self_attn.o_proj.weight": blk.attn.o.weight,
            p + "mlp.gate_proj.weight": gate,
            p + "mlp.up_proj.weight": up,
            p + "mlp.down_proj.weight": blk.mlp.down.weight,
            p + "input_layernorm.weight": blk.attn_norm.weight,
            p + "post_attention_layernorm.weight": blk.mlp_norm.weight,
        }
    out["model.norm.weight"] = model.norm.weight
    if not cfg.tie_word_embeddings:
        out["lm_head.weight"] = model.lm_head.weight
    return {k: v.detach().contiguous() for k, v in out.items()}


def from_hf_state_dict(model: PuyuLlama, hf: dict[str, torch.Tensor]) -> None:
    """Load LlamaForCausalLM weights (e.g. a saved checkpoint) into ``model`` in place."""
    own: dict[str, torch.Tensor] = {"embed.weight": hf["model.embed_tokens.weight"]}
    for i in range(model.config.num_hidden_layers):
        p = f"model.layers.{i}."
        own |= {
            f"blocks.{i}.attn.qkv.weight": torch.cat(
                [hf[p + f"self_attn.{n}_proj.weight"] for n in ("q", "k", "v")], dim=0
            ),
            f"blocks.{i}.attn.o.weight": hf[p + "self_attn.o_proj.weight"],
            f"blocks.{i}.mlp.gate_up.weight": torch.cat(
                [hf[p + "mlp.gate_proj.weight"], hf[p + "mlp.up_proj.weight"]], dim=0
            ),
            f"blocks.{i}.mlp.down.weight": hf[p + "mlp.down_proj.weight"],
            f"blocks.{i}.attn_norm.weight": hf[p + "input_layernorm.weight"],
            f"blocks.{i}.mlp_norm.weight": hf[p + "post_attention_layernorm.weight"],
        }
    own["norm.weight"] = hf["model.norm.weight"]
    own["lm_head.weight"] = hf.get("lm_head.weight", hf["model.embed_tokens.weight"])
    missing, unexpected = model.load_state_dict(own, strict=False)
    if unexpected or [m for m in missing if not m.startswith("rotary.")]:
        raise ValueError(f"checkpoint does not fit the model: missing {missing}, unexpected {unexpected}")
