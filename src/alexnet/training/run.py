"""What one training run is made of (`Run`), and what it returns (`RunResult`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import Config
from ..data.pipeline import Data
from ..evaluation import Evaluation, StepSettings
from . import distributed
from .ema import WeightEma
from .optim import Schedule
from .state import EpochTotals
from .strategy import Strategy


@dataclass
class RunResult:
    out: Path
    history: list[dict[str, float]] = field(default_factory=list)
    best_acc1: float = 0.0
    final: Evaluation | None = None  # the last validation
    test: Evaluation | None = None  # with data.val_split: the test split, after the last epoch


@dataclass
class Run:
    """Everything one training run is made of, built by `_setup` and advanced by the epoch loop."""

    cfg: Config
    out: Path
    device: torch.device
    precision: str
    dist: distributed.DistInfo
    strategy: Strategy
    data: Data
    model: nn.Module  # what trains: DDP, a tower's shard, or the model itself
    plain: nn.Module  # the bare module, for state dicts
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    scaler: torch.amp.GradScaler | None
    steps: int  # batches per epoch
    settings: StepSettings
    eval_settings: StepSettings
    result: RunResult
    started: float  # perf_counter() when fit began
    start_epoch: int = 0
    start_step: int = 0
    totals: EpochTotals = field(default_factory=EpochTotals)  # the running sums of a resumed epoch
    callbacks: Any = None  # a `callbacks.Callbacks`, set by fit
    ema: WeightEma | None = None  # with train.ema_decay: the moving average of the weights
    last_train: dict[str, float] = field(default_factory=dict)  # the last epoch's training metrics (this process)
