"""torch.distributed for DeepSpeed jobs, with or without a launcher (trainer and finetuner share it)."""

from __future__ import annotations

import os


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
    deepspeed.init_distributed(dist_backend="nccl" if device_type == "cuda" else "gloo")
