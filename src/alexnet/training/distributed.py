"""Multi-process training under ``torchrun``: read the environment it sets, and no-ops in a single process.

    torchrun --nproc_per_node=8 -m alexnet.cli train --recipe paper-imagenet --data-dir /imagenet
    torchrun --nnodes=2 --node_rank=0 --master_addr=HOST --nproc_per_node=8 -m alexnet.cli train ...

Each process takes every ``world``-th sample of the epoch's shuffled order (``batch_size`` is per process, as in
torchvision's references), gradients are averaged by DistributedDataParallel, evaluation counts each validation
image exactly once (no padded duplicates) and sums the counts across processes, and only rank 0 writes files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def setup(device: torch.device) -> DistInfo:
    """Join the process group torchrun describes in RANK / WORLD_SIZE / LOCAL_RANK; a single process skips it.

    NCCL on CUDA (each process on ``cuda:LOCAL_RANK``), gloo on the CPU.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend)
    return info


def local_device(device: torch.device, info: DistInfo) -> torch.device:
    """Each process's own GPU under torchrun; the CPU is shared."""
    if device.type == "cuda" and info.enabled:
        return torch.device("cuda", info.local_rank)
    return device


def all_reduce_sum(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum a tensor over processes (identity in a single process)."""
    if info.enabled:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
