"""The processes of a harvest under ``torchrun``: `torch.distributed` does the launching,
rendezvous and failure detection; a harvest only asks for its rank and waits at barriers."""

from __future__ import annotations

import os

import torch.distributed as dist


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of processes. Started by torchrun (``WORLD_SIZE`` > 1)
    with no process group yet, it joins one: gloo on CPU, nccl when CUDA is available."""
    if not dist.is_available():
        return 0, 1
    if not dist.is_initialized():
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return 0, 1
        import torch

        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
