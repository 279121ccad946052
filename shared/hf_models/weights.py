"""Reading a folder's weights (safetensors or PyTorch pickles, sharded or not) and writing safetensors."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from shared.hf_models.formats import UnsupportedModel

# transformers' own default shard size, so a saved folder looks like one it would write.
MAX_SHARD_BYTES = 5 * 1024**3

_LAYOUTS = (
    ("model.safetensors.index.json", "model.safetensors"),
    ("pytorch_model.bin.index.json", "pytorch_model.bin"),
)


def weight_files(folder: Path) -> list[Path]:
    """The weight files of ``folder``, in the order of its shard index when there is one."""
    for index_name, single_name in _LAYOUTS:
        index = folder / index_name
        if index.is_file():
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            return [folder / name for name in dict.fromkeys(weight_map.values())]
        if (folder / single_name).is_file():
            return [folder / single_name]
    raise UnsupportedModel(f"{folder} holds no model.safetensors or pytorch_model.bin (nor a shard index)")


def iter_tensors(folder: Path, dtype: torch.dtype | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor of the checkpoint as (name, tensor), floating-point ones cast to ``dtype``."""
    for file in weight_files(folder):
        if file.suffix == ".safetensors":
            with safe_open(str(file), framework="pt", device="cpu") as handle:
                for name in handle.keys():
                    yield name, _cast(handle.get_tensor(name), dtype)
        else:
            # Memory-mapped where the file is torch's zip format; older pickles are read whole.
            state = torch.load(file, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(file))
            for name, tensor in state.items():
                yield name, _cast(tensor, dtype)


def _cast(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    return tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor


def write_safetensors(state: Mapping[str, torch.Tensor], out_dir: Path) -> list[Path]:
    """Write ``state`` as ``model.safetensors``, or as shards with an index past ``MAX_SHARD_BYTES``."""
    plan: list[list[str]] = [[]]
    size = 0
    for name, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if plan[-1] and size + nbytes > MAX_SHARD_BYTES:
            plan.append([])
            size = 0
        plan[-1].append(name)
        size += nbytes
    out_dir.mkdir(parents=True, exist_ok=True)
    names = (
        ["model.safetensors"]
        if len(plan) == 1
        else [f"model-{i:05d}-of-{len(plan):05d}.safetensors" for i in range(1, len(plan) + 1)]
    )
    for file_name, shard in zip(names, plan, strict=True):
        save_file(
            _standalone({name: state[name] for name in shard}),
            str(out_dir / file_name),
            metadata={"format": "pt"},
        )
    if len(plan) > 1:
        total = sum(t.numel() * t.element_size() for t in state.values())
        weight_map = {name: file_name for file_name, shard in zip(names, plan, strict=True) for name in shard}
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")
    return [out_dir / name for name in names]


def _standalone(shard: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous CPU tensors, tied ones copied: safetensors refuses tensors that share memory."""
    seen: set[int] = set()
    out = {}
    for name, tensor in shard.items():
        tensor = tensor.detach().to("cpu").contiguous()
        ptr = tensor.untyped_storage().data_ptr()
        out[name] = tensor.clone() if ptr in seen else tensor
        seen.add(ptr)
    return out
