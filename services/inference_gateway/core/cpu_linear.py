"""Linear layers on the CPU over weights prepacked once for oneDNN, as vLLM's CPU backend serves them.

``F.linear`` hands oneDNN the plain ``[out, in]`` weight on every call, and oneDNN reorders it into its
blocked layout each time; at the batch sizes of a decode step (one token per running sequence) that
costs a fifth to a third of the matmul (fp32 and bf16 alike, measured on AVX-512). ``pack_linears``
replaces a served model's plain ``nn.Linear`` projections with ``PackedLinear``: torch's own
``mkldnn._linear_pointwise`` over a weight reordered once (the op and packing torch's inductor emits
for a frozen CPU graph; compiling the whole step instead would recompile for every batch shape).
The product is oneDNN's either way: the outputs equal ``F.linear``'s.

``fused_mlp`` runs Llama's ``down(silu(gate(x)) * up(x))`` with the SiLU and the product fused into
the two packed matmuls (oneDNN post-ops): two elementwise passes over the step's widest activations
fewer, computed in fp32 before the one rounding to the model's dtype.

Only the engine's own copy of a model is packed (``Engine.load``): the module keeps working for any
caller (inputs of any leading shape) but its weight is an opaque oneDNN tensor, not a dense one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from transformers.activations import SiLUActivation

# weights the packed op serves; fp16 has no packed CPU path worth taking here
_DTYPES = (torch.float32, torch.bfloat16)


def packable(module: nn.Module) -> bool:
    """A plain dense linear layer on the CPU in a dtype oneDNN packs (not a quantised or adapted one)."""
    if type(module) is not nn.Linear or module.weight.device.type != "cpu":
        return False
    dtype = module.weight.dtype
    if dtype == torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return False
    return dtype in _DTYPES and torch.backends.mkldnn.is_available()


class PackedLinear(nn.Module):
    """``nn.Linear`` whose weight oneDNN reordered once (for batches of about ``batch_hint`` rows)."""

    def __init__(self, linear: nn.Linear, batch_hint: int) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), batch_hint)
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = linear.bias

    def forward(self, x: torch.Tensor, activation: str = "none") -> torch.Tensor:
        """``activation``: a oneDNN post-op applied before the result is rounded (``swish``: SiLU)."""
        out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, activation, [], "")
        return out

    def times(self, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        """``linear(x) * other``, the product fused into the matmul."""
        out: torch.Tensor = torch.ops.mkldnn._linear_pointwise.binary(x, other, self.weight, self.bias, "mul")
        return out


def pack_linears(model: Any, batch_hint: int) -> int:
    """Pack every plain ``nn.Linear`` of the decoder layers and an untied output head, in place;
    returns how many were packed. Quantised layers (their own module types) stay as they are."""
    if not torch.backends.mkldnn.is_available():
        return 0
    head = model.get_output_embeddings()
    tied = head is not None and head.weight is model.get_input_embeddings().weight
    parents = [
        (parent, name, child)
        for parent in model.model.layers.modules()
        for name, child in parent.named_children()
        if packable(child)
    ]
    if head is not None and not tied and packable(head):
        parents.append((model, _attr_of(model, head), head))
    for parent, name, child in parents:
        setattr(parent, name, PackedLinear(child, batch_hint))
    return len(parents)


def _attr_of(parent: nn.Module, child: nn.Module) -> str:
    return next(name for name, module in parent.named_children() if module is child)


def fused_mlp(mlp: nn.Module) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """``mlp``'s forward with the SiLU and product fused, for Llama's gated SiLU MLP with packed
    projections (``[T, hidden]`` in and out); None for any other MLP."""
    gate, up, down = (getattr(mlp, n, None) for n in ("gate_proj", "up_proj", "down_proj"))
    if not (
        isinstance(gate, PackedLinear) and isinstance(up, PackedLinear) and isinstance(down, PackedLinear)
    ):
        return None
    if not isinstance(getattr(mlp, "act_fn", None), nn.SiLU | SiLUActivation):
        return None
    return lambda x: down(up.times(x, gate(x, "swish")))
