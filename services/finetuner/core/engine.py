"""How a finetuning step is taken: plain torch, or DeepSpeed ZeRO 1-3 (``spec.zero_stage``).

Both give the loop the same calls: ``forward`` (the module to call), ``step(loss)`` (backward, clip
to 1.0, AdamW, schedule), ``state``/``restore`` (resumable optimizer, schedule and trained weights)
and ``gathered`` (full parameters for export). Under a launcher (torchrun, srun: WORLD_SIZE > 1)
the plain engine wraps the model in DistributedDataParallel and DeepSpeed runs data-parallel over
the same process group; alone, DeepSpeed is started as a world of one (gloo on CPU, nccl on CUDA),
as the trainer does. With ZeRO-3 the parameters live partitioned in DeepSpeed's hands: ``gathered``
brings them back for the export and for evaluation-free reads. ``module`` is always the unwrapped
model (its parameter names are the adapter's and the state file's).
"""

from __future__ import annotations

import contextlib
import shutil
import threading
from pathlib import Path
from typing import Any

import torch

from contracts.events import FinetuneSpec
from shared.distributed import distributed, init_deepspeed_world, world

GRAD_CLIP = 1.0
# One ZeRO engine at a time per process: all of them share the one process group, and collectives
# of two engines in two threads would interleave on it.
_ZERO_LOCK = threading.Lock()
DS_DIR = "deepspeed"  # under the state folder: DeepSpeed's own checkpoint, one tag per saved step


def build_optimizer(params: list[torch.nn.Parameter], spec: FinetuneSpec) -> torch.optim.AdamW:
    # The fused kernel (CPU and CUDA, torch >= 2.4) updates every tensor in one pass; the default
    # on CPU is a Python loop over tensors, a visible cost for LoRA's many small matrices.
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in params)
    return torch.optim.AdamW(params, lr=spec.learning_rate, weight_decay=0.0, fused=fused or None)


def build_scheduler(optimizer: torch.optim.Optimizer, spec: FinetuneSpec) -> Any:
    warmup = max(1, spec.max_steps // 10)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))


class TorchEngine:
    """AdamW + warm-up schedule; DistributedDataParallel over the launcher's ranks (DDP averages the
    gradients in backward; its construction broadcasts rank 0's weights, LoRA's included)."""

    def __init__(self, model: Any, spec: FinetuneSpec, device: str = "cpu") -> None:
        self.module = model
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(self.params, spec)
        self.scheduler = build_scheduler(self.optimizer, spec)
        self._forward: Any = model
        if distributed():
            index = torch.device(device).index
            self._forward = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[index] if device.startswith("cuda") and index is not None else None
            )

    @property
    def forward(self) -> Any:
        return self._forward

    @property
    def reference(self) -> Any:
        """What evaluation and DPO's reference pass call: the model without DDP's gradient hooks."""
        return self.module

    def step(self, loss: torch.Tensor) -> None:
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, GRAD_CLIP)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def state(self, state_dir: Path, step: int) -> dict[str, Any]:
        if not world().main:  # every rank holds the same weights and optimizer: rank 0 saves them
            return {}
        trained = {n: p.detach().cpu() for n, p in self.module.named_parameters() if p.requires_grad}
        return {
            "trained": trained,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
        }

    def saved(self, state_dir: Path, step: int) -> None:
        """Called once the state file naming ``step`` is in place: nothing older to drop."""

    def restore(self, blob: dict[str, Any], state_dir: Path) -> None:
        params = dict(self.module.named_parameters())
        missing = set(blob["trained"]) - set(params)
        if missing:
            raise ValueError(f"saved state has weights this model lacks: {sorted(missing)[:3]}")
        with torch.no_grad():
            for name, value in blob["trained"].items():
                params[name].copy_(value.to(params[name].device))
        self.optimizer.load_state_dict(blob["optimizer"])
        self.scheduler.load_state_dict(blob["scheduler"])

    def gathered(self) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext()

    def close(self) -> None:
        """Nothing to release."""


class DeepSpeedEngine(TorchEngine):
    """ZeRO 1 (optimizer state), 2 (+ gradients) or 3 (+ parameters) through ``deepspeed.initialize``;
    the same AdamW and schedule as the plain engine, handed to DeepSpeed as client objects."""

    def __init__(self, model: Any, spec: FinetuneSpec, device: str) -> None:
        _ZERO_LOCK.acquire()
        try:
            self._start(model, spec, device)
        except BaseException:
            _ZERO_LOCK.release()
            raise

    def _start(self, model: Any, spec: FinetuneSpec, device: str) -> None:
        import deepspeed  # the [train] extra; imported only when a job asks for ZeRO

        self.spec, self._closed = spec, False
        init_deepspeed_world("cuda" if device.startswith("cuda") else "cpu")
        self.params = [p for p in model.parameters() if p.requires_grad]
        optimizer = build_optimizer(self.params, spec)
        config = {
            "train_micro_batch_size_per_gpu": spec.micro_batch_size,
            "gradient_accumulation_steps": 1,
            "gradient_clipping": GRAD_CLIP,
            "zero_optimization": {"stage": spec.zero_stage},
            "steps_per_print": 1 << 30,
            "wall_clock_breakdown": False,
        }
        self.ds, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model,
            optimizer=optimizer,
            lr_scheduler=build_scheduler(optimizer, spec),
            config=config,
        )
        self.module = model

    @property
    def forward(self) -> Any:
        return self.ds

    @property
    def reference(self) -> Any:
        return self.ds  # ZeRO-3's parameters are gathered by the engine's hooks

    def step(self, loss: torch.Tensor) -> None:
        self.ds.backward(loss)
        self.ds.step()  # clips, steps AdamW and the schedule, zeroes the gradients

    def state(self, state_dir: Path, step: int) -> dict[str, Any]:
        # DeepSpeed's own sharded checkpoint, tagged by step: the state file names the tag it goes
        # with, and older tags are dropped only once that file is in place (``saved``).
        tag = f"step-{step}"
        self.ds.save_checkpoint(str(state_dir / DS_DIR), tag=tag, save_latest=False)
        return {"deepspeed_tag": tag}

    def saved(self, state_dir: Path, step: int) -> None:
        if not world().main:
            return
        for old in (state_dir / DS_DIR).glob("step-*"):
            if old.name != f"step-{step}":
                shutil.rmtree(old, ignore_errors=True)

    def restore(self, blob: dict[str, Any], state_dir: Path) -> None:
        tag = blob.get("deepspeed_tag")
        if tag is None:
            raise ValueError("saved state was written without DeepSpeed; it cannot resume a ZeRO run")
        path, _ = self.ds.load_checkpoint(str(state_dir / DS_DIR), tag=tag, load_module_strict=False)
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed state {tag} in {state_dir / DS_DIR}")

    def gathered(self) -> contextlib.AbstractContextManager[Any]:
        if self.spec.zero_stage < 3:
            return contextlib.nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters(list(self.module.parameters()), modifier_rank=None)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.ds.destroy()
        finally:
            _ZERO_LOCK.release()


def build_engine(model: Any, spec: FinetuneSpec, device: str) -> TorchEngine:
    return DeepSpeedEngine(model, spec, device) if spec.zero_stage else TorchEngine(model, spec, device)
