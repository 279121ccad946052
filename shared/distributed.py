"""torch.distributed for the trainer's and finetuner's runs: the launcher's world (torchrun, srun,
an indexed Kubernetes Job set RANK / LOCAL_RANK / WORLD_SIZE / MASTER_ADDR), its process group
(NCCL on CUDA, gloo on the CPU), and the few collectives a data-parallel loop needs.

Every helper is a no-op in a world of one, so the same loop runs in the service's own process.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    import torch

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    rank: int
    local_rank: int
    size: int

    @property
    def main(self) -> bool:
        return self.rank == 0


def world() -> World:
    """This process's place in the launcher's world (a world of one when no launcher set it)."""
    return World(
        int(os.environ.get("RANK", 0)),
        int(os.environ.get("LOCAL_RANK", 0)),
        int(os.environ.get("WORLD_SIZE", 1)),
    )


def backend_for(device_type: str) -> str:
    return "nccl" if device_type == "cuda" else "gloo"


def init_process_group(device_type: str) -> bool:
    """Join the launcher's process group when there is more than one rank; True when this call
    created it (the caller then destroys it)."""
    import torch.distributed as dist

    if world().size <= 1 or dist.is_initialized():
        return False
    dist.init_process_group(backend_for(device_type))
    return True


def destroy_process_group() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def process_group(device_type: str) -> Iterator[World]:
    """The launcher's process group for the duration (created and destroyed here unless it exists)."""
    created = init_process_group(device_type)
    try:
        yield world()
    finally:
        if created:
            destroy_process_group()


def distributed() -> bool:
    """More than one rank, in an initialised process group."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    if distributed():
        import torch.distributed as dist

        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor summed over ranks, in place (itself in a world of one)."""
    if distributed():
        import torch.distributed as dist

        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def rank_share(batch: Sequence[T], rank: int, size: int) -> list[T]:
    """This rank's contiguous share of a global batch whose length ``size`` divides. Hand-written, not
    a DistributedSampler: the loop's seeded schedule already picks each step's global batch (and
    replays it on resume), so each rank only needs its slice of it."""
    if len(batch) % size:
        raise ValueError(f"a global batch of {len(batch)} does not split over {size} ranks")
    per = len(batch) // size
    return list(batch[rank * per : (rank + 1) * per])


def init_deepspeed_world(device_type: str) -> None:
    """Initialise the process group DeepSpeed needs once per process: the launcher's world when one
    set ``MASTER_ADDR`` (torchrun / deepspeed), else a world of one on a free local port. NCCL on
    CUDA, gloo on the CPU."""
    import deepspeed  # the [train] extra; imported only when a job asks for ZeRO
    import torch.distributed as dist

    if dist.is_initialized():
        return
    if "MASTER_ADDR" not in os.environ:  # started without a launcher: a world of one
        from shared.natsserver import free_port

        os.environ.update(
            MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", LOCAL_RANK="0", WORLD_SIZE="1"
        )
    deepspeed.init_distributed(dist_backend=backend_for(device_type))
