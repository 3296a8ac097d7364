"""How one run spreads over torchrun's processes: ``data`` (DistributedDataParallel, the default), ``towers`` (the
paper's two-GPU split) or ``hybrid`` (data-parallel convolutions, model-parallel fc layers); see
`alexnet.training.model_parallel`. `fit` asks this object the few questions whose answers differ."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..artifacts.trained import check_fits, first_non_finite, load_state
from ..config import OptimConfig
from ..errors import ConfigError, NonFiniteWeightsError
from ..models import model_from_config
from .distributed import DistInfo, convert_sync_batchnorm
from .model_parallel import ShardedAlexNet

log = logging.getLogger(__name__)


@dataclass
class Strategy:
    mode: str
    dist: DistInfo

    @classmethod
    def for_run(cls, mode: str, info: DistInfo, clip_grad_norm: float | None, compile: bool) -> Strategy:
        if mode != "data" and not info.enabled:
            raise ConfigError(
                f"parallel mode {mode!r} splits the model across processes: start it under torchrun with 2 or more, "
                f"e.g. torchrun --nproc_per_node 2 -m alexnet.cli train --parallel {mode} ..."
            )
        if mode != "data" and (clip_grad_norm or compile):
            raise ConfigError(f"parallel mode {mode!r} does not support gradient clipping or compiling (--compile) yet")
        return cls(mode, info)

    @property
    def sharded(self) -> bool:
        return self.mode != "data" and self.dist.enabled

    def data_shard(self) -> tuple[int, int]:
        """(rank, world) for the training data: towers feed every rank the same batches."""
        return (0, 1) if self.mode == "towers" else (self.dist.rank, self.dist.world)

    def aug_seed(self, seed: int) -> int:
        """Augmentation seeds differ per process where each has its own images (rank 0 keeps the run's seed)."""
        return seed if self.mode == "towers" else seed + 1_000_003 * self.dist.rank

    def wrap(self, model: nn.Module, sync_bn: bool | None = None) -> tuple[nn.Module, nn.Module]:
        """(what trains, the bare module for state dicts): DDP, this rank's shard, or the model itself.

        Under DDP, batch norm becomes `SyncBatchNorm2d` / `SyncBatchNorm1d` when ``sync_bn`` says so (None: whenever
        the model has it).
        """
        if self.sharded:
            shard = ShardedAlexNet(model, self.mode, self.dist.rank, self.dist.world)
            mine, total = (sum(p.numel() for p in m.parameters()) for m in (shard, model))
            log.info("--parallel %s: rank %d holds %d of %d parameters", self.mode, self.dist.rank, mine, total)
            return shard, shard
        if self.dist.enabled:
            has_bn = any(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) for m in model.modules())
            if has_bn and sync_bn is not False:
                convert_sync_batchnorm(model)
                log.info("batch norm synchronised across %d processes (--no-sync-bn: per process)", self.dist.world)
            return nn.parallel.DistributedDataParallel(model), model
        return model, model

    def model_state(self, plain: nn.Module) -> dict[str, torch.Tensor]:
        """The whole model's state on the CPU (a collective under towers and hybrid)."""
        state = plain.full_state_dict() if isinstance(plain, ShardedAlexNet) else plain.state_dict()
        return {k: v.detach().cpu() for k, v in state.items()}

    def load_model_state(self, plain: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
        if isinstance(plain, ShardedAlexNet):
            with torch.device("meta"):  # the whole network's shapes, to check the state against; no memory
                whole = model_from_config(plain.config)
            check_fits(whole, state, source)
            plain.load_full_state_dict(state)
        else:
            load_state(plain, state, source)

    def optimizer_states(self, optimizer: torch.optim.Optimizer) -> list[dict[str, Any]]:
        """Every rank's optimizer state when each holds other parameters (a collective), else rank 0's alone."""
        own = optimizer.state_dict()
        if not self.sharded:
            return [own]
        states: list[Any] = [None] * self.dist.world
        dist.all_gather_object(states, own)
        return states

    def check_finite(self, plain: nn.Module, where: str, keeps: str) -> None:
        """Raise `NonFiniteWeightsError` on every rank when any rank's weights hold NaN or infinity."""
        bad = first_non_finite(plain)
        if self.sharded:
            flag = torch.tensor([0.0 if bad is None else 1.0])
            dist.all_reduce(flag)
            bad = bad or ("another rank's shard" if flag.item() else None)
        if bad is not None:
            raise NonFiniteWeightsError(
                f"weights became non-finite ({bad}) {where}; not saved, {keeps} keeps the last finite state. Lower "
                "the learning rate or try --precision fp32"
            )

    def scaled_lr(self, optim: OptimConfig, batch: int) -> OptimConfig:
        """``optim`` with the linear scaling rule applied when ``lr_reference_batch`` is set: the learning rate
        times the global batch (``batch`` per process, accumulation included, times the data-parallel processes)
        over the reference batch (Goyal et al. 2017, "Accurate, large minibatch SGD")."""
        if optim.lr_reference_batch is None:
            return optim
        global_batch = batch * self.data_shard()[1]
        lr = optim.lr * global_batch / optim.lr_reference_batch
        log.info(
            "learning rate %g × %d / %d = %g (linear scaling rule)",
            optim.lr,
            global_batch,
            optim.lr_reference_batch,
            lr,
        )
        return dataclasses.replace(optim, lr=lr)

    @property
    def eval_synced(self) -> bool:
        """Whether evaluation sums counts across processes (data) or every rank saw the whole set (towers, hybrid)."""
        return not self.sharded
