"""Running calibration sequences through a model one decoder layer at a time.

Each sequence runs on its own (no padding, so no mask to get wrong); the inputs of the first decoder
layer are caught with a pre-hook, together with the keyword arguments the model passes every layer
(rotary position embeddings, mask, positions), and then carried from layer to layer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass
class LayerInput:
    hidden: torch.Tensor  # [1, tokens, hidden]
    kwargs: dict[str, Any] = field(default_factory=dict)


class _Caught(Exception):
    pass


@torch.no_grad()
def first_layer_inputs(
    model: nn.Module, layers: nn.ModuleList, sequences: Sequence[Sequence[int]]
) -> list[LayerInput]:
    caught: list[LayerInput] = []

    def catch(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        hidden = args[0] if args else kwargs.pop("hidden_states")
        kept = {
            k: v
            for k, v in kwargs.items()
            if k not in ("hidden_states", "past_key_values", "past_key_value", "use_cache")
        }
        caught.append(LayerInput(hidden, kept))
        raise _Caught

    device = next(model.parameters()).device
    handle = layers[0].register_forward_pre_hook(catch, with_kwargs=True)
    try:
        for sequence in sequences:
            if not len(sequence):
                continue
            try:
                model(input_ids=torch.tensor([list(sequence)], device=device), use_cache=False)
            except _Caught:
                pass
    finally:
        handle.remove()
    return caught


def run_layer(layer: nn.Module, item: LayerInput) -> torch.Tensor:
    return first_output(layer(item.hidden, **item.kwargs))


def first_output(out: Any) -> torch.Tensor:
    """A decoder layer or attention block returns a tensor or a tuple starting with one."""
    return out[0] if isinstance(out, tuple) else out


@contextmanager
def recording_inputs(
    modules: dict[str, nn.Module], sink: Callable[[str, torch.Tensor], None]
) -> Iterator[None]:
    """Hand every input of ``modules`` to ``sink(name, x)`` while the block runs."""
    handles = []
    for name, module in modules.items():

        def hook(_module: nn.Module, args: tuple[Any, ...], _name: str = name) -> None:
            sink(_name, args[0].detach())

        handles.append(module.register_forward_pre_hook(hook))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
