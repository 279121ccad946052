"""Engines: how a step is taken. Plain torch (one process, or DDP under torchrun) or DeepSpeed ZeRO.

Both expose the same five calls to the loop, so one job spec runs on a laptop CPU and on many GPUs:
``forward_backward`` (one micro batch), ``step`` (clip + optimizer + schedule), ``module`` (the
unwrapped model, for saving), ``save_state``/``load_state`` (optimizer + scheduler).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Any, cast

import torch

from contracts.events import TrainSpec
from services.trainer.core.model import TrainableModel
from services.trainer.core.optim import build_optimizer, build_scheduler, lr_at, param_groups
from shared.distributed import init_deepspeed_world, world


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: oneDNN's bf16 GEMMs run at about twice the fp32 rate there. Without them
    bf16 is emulated and slower than fp32."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def use_bf16(spec: TrainSpec, device: torch.device) -> bool:
    """bf16 autocast (fp32 master weights): on CUDA, and on CPUs that multiply bf16 natively (ZeRO on
    the CPU stays fp32: DeepSpeed's CPU engine has no bf16 mode)."""
    if spec.precision != "auto":
        return spec.precision == "bf16"
    if device.type == "cuda":
        return True
    return device.type == "cpu" and spec.zero_stage == 0 and cpu_has_native_bf16()


# Below this many steps the one-off compile costs more than fusion saves: ~30 s on two cores with a
# cold Inductor cache (~3 s warm) against ~45 ms saved per step of the demo model in bf16.
COMPILE_AUTO_MIN_STEPS = 500


def has_cxx_compiler() -> bool:
    """Inductor's CPU backend builds C++ kernels: it needs a compiler on PATH (or CXX)."""
    return any(shutil.which(c) for c in (os.environ.get("CXX", ""), "g++", "clang++", "c++") if c)


def use_compile(spec: TrainSpec, device: torch.device) -> bool:
    """Whether the training forward runs through torch.compile. On CUDA, auto keeps the hand-written
    Triton kernels (they are opaque to the compiler); ZeRO engines manage their module themselves."""
    if spec.torch_compile != "auto":
        return spec.torch_compile == "on"
    return (
        spec.init_from is None  # measured for PuyuLlama only; a checkpoint's own class stays eager
        and device.type == "cpu"
        and spec.zero_stage == 0
        and spec.max_steps >= COMPILE_AUTO_MIN_STEPS
        and has_cxx_compiler()
    )


class TorchEngine:
    """AdamW (fused) + LambdaLR; DistributedDataParallel when launched with WORLD_SIZE > 1."""

    def __init__(self, model: TrainableModel, spec: TrainSpec, device: torch.device) -> None:
        self.spec, self.device = spec, device
        self._module = model.to(device)
        self.optimizer = build_optimizer(self._module, spec)
        self.scheduler = build_scheduler(self.optimizer, spec)
        self.model: torch.nn.Module = self._module
        if world().size > 1:
            self.model = torch.nn.parallel.DistributedDataParallel(
                self._module, device_ids=[device.index] if device.type == "cuda" else None
            )
        self.eval_model: torch.nn.Module = self.model  # eager: no second compile for no-grad mode
        if use_compile(spec, device):
            self.model = cast(torch.nn.Module, torch.compile(self.model))
        self.bf16 = use_bf16(spec, device)

    @property
    def module(self) -> TrainableModel:
        return self._module

    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def forward_backward(self, batch: dict[str, torch.Tensor], accum: int, last: bool) -> torch.Tensor:
        sync: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
        if isinstance(self.model, torch.nn.parallel.DistributedDataParallel) and not last:
            sync = self.model.no_sync()  # all-reduce once per optimizer step, not per micro batch
        with sync:
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                _, loss = self.model(batch["input_ids"], batch["labels"], batch.get("position_ids"))
            assert loss is not None
            (loss / accum).backward()
        return loss.detach()

    def step(self) -> float:
        norm = torch.nn.utils.clip_grad_norm_(self._module.parameters(), self.spec.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def save_state(self, dest: Path) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def load_state(self, src: Path, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])

    def gathered(self) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext()


class DeepSpeedEngine(TorchEngine):
    """DeepSpeed ZeRO 1/2/3: sharded optimizer state (and gradients / parameters from stage 2 / 3).

    Its optimizer and scheduler state are saved as DeepSpeed's own sharded checkpoint beside ours.
    """

    def __init__(self, model: TrainableModel, spec: TrainSpec, device: torch.device) -> None:
        import deepspeed  # the [train] extra; imported only when a job asks for ZeRO

        self.spec, self.device, self._module = spec, device, model
        self.bf16 = use_bf16(spec, device)
        init_deepspeed_world(device.type)
        config = {
            "train_micro_batch_size_per_gpu": spec.micro_batch_size,
            "gradient_accumulation_steps": spec.gradient_accumulation_steps,
            "gradient_clipping": spec.grad_clip,
            "zero_optimization": {"stage": spec.zero_stage},
            "bf16": {"enabled": self.bf16},
            "steps_per_print": 1 << 30,
            "wall_clock_breakdown": False,
        }
        optimizer = torch.optim.AdamW(
            param_groups(model, spec), lr=spec.learning_rate, betas=(0.9, 0.95), eps=1e-8
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: lr_at(s, spec) / spec.learning_rate
        )
        self.model, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=config
        )
        self.ds: Any = self.model
        self.eval_model = self.model  # no torch.compile under ZeRO (validate() refuses it)

    def forward_backward(self, batch: dict[str, torch.Tensor], accum: int, last: bool) -> torch.Tensor:
        _, loss = self.ds(batch["input_ids"], batch["labels"], batch.get("position_ids"))
        self.ds.backward(loss)  # DeepSpeed scales by the accumulation itself
        self.ds.step()  # a no-op until the accumulation boundary
        return loss.detach()

    def step(self) -> float:
        norm = self.ds.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    def lr(self) -> float:
        return float(self.ds.get_lr()[0])

    def save_state(self, dest: Path) -> dict[str, Any]:
        self.ds.save_checkpoint(str(dest), tag="deepspeed", save_latest=False)
        return {}

    def load_state(self, src: Path, state: dict[str, Any]) -> None:
        path, _ = self.ds.load_checkpoint(str(src), tag="deepspeed", load_module_strict=False)
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed state in {src}")

    def gathered(self) -> contextlib.AbstractContextManager[Any]:
        if self.spec.zero_stage < 3:
            return contextlib.nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters(list(self._module.parameters()), modifier_rank=None)


def build_engine(model: TrainableModel, spec: TrainSpec, device: torch.device) -> TorchEngine:
    return DeepSpeedEngine(model, spec, device) if spec.zero_stage > 0 else TorchEngine(model, spec, device)
