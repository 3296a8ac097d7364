"""Multi-process training under ``torchrun``: read the environment it sets, and no-ops in a single process.

    torchrun --nproc_per_node=8 -m alexnet.cli train --recipe paper-imagenet --data-dir /imagenet
    torchrun --nnodes=2 --node_rank=0 --master_addr=HOST --nproc_per_node=8 -m alexnet.cli train ...

Each process takes every ``world``-th sample of the epoch's shuffled order (``batch_size`` is per process, as in
torchvision's references), gradients are averaged by DistributedDataParallel, evaluation counts each validation
image exactly once (no padded duplicates) and sums the counts across processes, and only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from ..errors import ConfigError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1  # the processes on this machine, which share its memory

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
    info = from_environment()
    if not info.enabled:
        return info
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            count = torch.cuda.device_count()
            if info.local_rank >= count:  # torch says "CUDA error: invalid device ordinal"
                raise ConfigError(
                    f"LOCAL_RANK={info.local_rank} asks for cuda:{info.local_rank} and this machine has {count} CUDA "
                    f"device(s): start at most one process a GPU (torchrun --nproc-per-node={count})"
                )
            torch.cuda.set_device(info.local_rank)
        with _signals_end_the_process():
            dist.init_process_group(backend)
    return info


@contextlib.contextmanager
def _signals_end_the_process() -> Iterator[None]:
    """Ctrl-C and SIGTERM end the process at once while it waits for the others to join: that wait is a C++ call,
    during which Python's handlers cannot run, so a rank started alone (by hand, or whose peers never came) ignored
    both until the store's 30-minute timeout. Nothing is written yet, so nothing is lost; signals the caller ignores
    stay ignored, and only the main thread may change them."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for signum, handler in previous.items():
        if handler is not signal.SIG_IGN:
            signal.signal(signum, signal.SIG_DFL)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def from_environment() -> DistInfo:
    """This process's place among torchrun's (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE); one process where
    WORLD_SIZE is unset.

    Raises:
        ConfigError: the variables are not whole numbers, or WORLD_SIZE asks for several processes without the
            RANK torchrun would give each (set by hand, or left over from another job).
    """

    def number(name: str, default: int | None, low: int, high: float = math.inf) -> int | None:
        raw = os.environ.get(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            value = None
        if value is None or not low <= value < high:
            top = "" if high == math.inf else f" below WORLD_SIZE ({high:g})"
            raise ConfigError(
                f"{name}={raw!r}: expected a whole number ≥ {low}{top}; torchrun sets it, so unset it "
                "to train in one process"
            )
        return value

    world = number("WORLD_SIZE", 1, 1)
    if world == 1:
        return DistInfo()
    rank = number("RANK", None, 0, world)
    if rank is None:
        raise ConfigError(
            f"WORLD_SIZE={world} asks for {world} processes but RANK is not set: start them with torchrun "
            f"(torchrun --nproc-per-node={world} -m alexnet.cli train ...), or unset WORLD_SIZE to train in one process"
        )
    port = os.environ.get("MASTER_PORT")  # torch.distributed said "invalid literal for int() with base 10: 'abc'"
    if port is not None and not (port.isascii() and port.isdigit() and int(port) <= 65535):
        raise ConfigError(f"MASTER_PORT={port!r}: expected a port number from 0 to 65535; torchrun sets it")
    return DistInfo(rank, world, number("LOCAL_RANK", 0, 0), number("LOCAL_WORLD_SIZE", 1, 1))


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


def least(value: int, info: DistInfo) -> int:
    """The least of ``value`` over the processes (``value`` itself in one process)."""
    if not info.enabled:
        return value
    least = torch.tensor([value], dtype=torch.int64)
    dist.all_reduce(least, op=dist.ReduceOp.MIN)
    return int(least.item())


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


class _SyncStats:
    """Batch norm whose training statistics cover the global batch of every process, on any device and backend.

    ``torch.nn.SyncBatchNorm`` runs only on GPUs; this one all-reduces each channel's (Σx, Σx², count) through the
    autograd-aware ``torch.distributed.nn.functional.all_reduce``, so the backward pass is exact too (tested equal to
    one process normalising the concatenated batch). Evaluation and a single process use the plain layer.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        c = x.shape[1]
        dims = (0, *range(2, x.ndim))  # every axis but the channels': (B, C) under fc layers, (B, C, H, W) under convs
        xf = x.float()
        count = torch.full((1,), xf.numel() / c, device=x.device)
        stats = all_reduce(torch.cat([xf.sum(dims), (xf * xf).sum(dims), count]))  # (2C + 1,)
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c : 2 * c] / n - mean * mean).clamp_min(0)  # biased, as BatchNorm normalises
        if self.track_running_stats:
            with torch.no_grad():
                m = self.momentum if self.momentum is not None else 0.1
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * n / (n - 1).clamp_min(1), alpha=m)  # unbiased
                self.num_batches_tracked.add_(1)
        shape = (1, c) + (1,) * (x.ndim - 2)
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


class SyncBatchNorm2d(_SyncStats, nn.BatchNorm2d):
    """BatchNorm2d synchronised across processes (see `_SyncStats`)."""


class SyncBatchNorm1d(_SyncStats, nn.BatchNorm1d):
    """BatchNorm1d synchronised across processes: the fc layers' norm (``fc_norm``)."""


_SYNCED = {nn.BatchNorm2d: SyncBatchNorm2d, nn.BatchNorm1d: SyncBatchNorm1d}


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """``module`` with every BatchNorm1d/2d replaced by its synchronised twin, holding the same parameters and
    buffers."""
    for name, child in module.named_children():
        synced = _SYNCED.get(type(child))
        if synced is not None:
            sync = synced(
                child.num_features,
                child.eps,
                child.momentum,
                child.affine,
                child.track_running_stats,
                device=child.weight.device,
            )
            sync.load_state_dict(child.state_dict())
            setattr(module, name, sync)
        else:
            convert_sync_batchnorm(child)
    return module
