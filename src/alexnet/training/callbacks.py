"""Hooks into a training run: the few events users need, and the built-in behaviours made of them.

``alexnet.fit(config, callbacks=[...])`` calls each callback at these events, in every process (a logger writes only
where ``run.dist.is_main``):

- ``on_run_start(run)``: the run is set up (resumed, if it was) and about to train its first epoch.
- ``on_train_epoch_end(run, epoch, train, control)``: an epoch has trained (``train``: its loss, acc1, img_s...,
  summed over processes); setting ``control.stop`` validates and tests this epoch, then stops. Every process must
  decide alike: decide from ``train``, which every process sees the same.
- ``on_epoch_end(run, epoch, row)``: the epoch's ``metrics.csv`` row (validation, and test on the last epoch).
- ``on_checkpoint(run, path)``: a checkpoint or release weights were written to ``path`` (the main process).
- ``on_run_end(run, result)``: training finished (not called when it failed or was interrupted).

The CLI's own behaviours use the same events: the epoch log line (`ProgressLog`), ``train.stop_at_train_acc1``
(`StopAtTrainAccuracy`) and the loggers of ``train.loggers`` (``tensorboard``: `TensorBoardLogger`). MLflow or
Weights & Biases would be one `Callback` each.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..models.inspect import conv1_weight, scaled_kernels

if TYPE_CHECKING:  # annotations only: run.py is below this module, fit.py above it
    from .run import Run, RunResult

log = logging.getLogger("alexnet.training.fit")


@dataclass
class Control:
    """What callbacks may ask of the loop at ``on_train_epoch_end``."""

    stop: bool = False
    reason: str = ""


class Callback:
    """Override the events you need; each does nothing by default."""

    def on_run_start(self, run: Run) -> None:
        pass

    def on_train_epoch_end(self, run: Run, epoch: int, train: dict[str, float], control: Control) -> None:
        pass

    def on_epoch_end(self, run: Run, epoch: int, row: dict[str, float]) -> None:
        pass

    def on_checkpoint(self, run: Run, path: Path) -> None:
        pass

    def on_run_end(self, run: Run, result: RunResult) -> None:
        pass


class Callbacks(Callback):
    """A list of callbacks called in order, as one."""

    def __init__(self, callbacks: list[Callback]) -> None:
        self.callbacks = list(callbacks)

    def on_run_start(self, run: Run) -> None:
        for c in self.callbacks:
            c.on_run_start(run)

    def on_train_epoch_end(self, run: Run, epoch: int, train: dict[str, float], control: Control) -> None:
        for c in self.callbacks:
            c.on_train_epoch_end(run, epoch, train, control)

    def on_epoch_end(self, run: Run, epoch: int, row: dict[str, float]) -> None:
        for c in self.callbacks:
            c.on_epoch_end(run, epoch, row)

    def on_checkpoint(self, run: Run, path: Path) -> None:
        for c in self.callbacks:
            c.on_checkpoint(run, path)

    def on_run_end(self, run: Run, result: RunResult) -> None:
        for c in self.callbacks:
            c.on_run_end(run, result)


class ProgressLog(Callback):
    """One log line per epoch, from the main process: what ``alexnet train`` prints."""

    def on_epoch_end(self, run: Run, epoch: int, row: dict[str, float]) -> None:
        if not run.dist.is_main:
            return
        val = "val not run (train.val_every)"
        if not math.isnan(row["val_acc1"]):
            val = f"val loss {row['val_loss']:.4f} acc1 {row['val_acc1']:.2f}% acc5 {row['val_acc5']:.2f}%"
        train = run.last_train
        log.info(
            "epoch %d/%d  lr %.2g  train loss %.4f acc1 %.2f%%  %s  %.0f img/s  data %.1fs compute %.1fs",
            row["epoch"],
            run.cfg.train.epochs,
            row["lr"],
            train["loss"],
            train["acc1"],
            val,
            train["img_s"],
            train["data_s"],
            train["compute_s"],
        )


class StopAtTrainAccuracy(Callback):
    """Stop after the epoch whose training accuracy (%, over every process) reaches ``target``
    (``train.stop_at_train_acc1``: Figure 1's "epochs to 25% training error")."""

    def __init__(self, target: float) -> None:
        self.target = target

    def on_train_epoch_end(self, run: Run, epoch: int, train: dict[str, float], control: Control) -> None:
        if train["acc1"] >= self.target:
            control.stop = True
            control.reason = f"training accuracy {train['acc1']:.2f}% reached train.stop_at_train_acc1={self.target:g}"


class TensorBoardLogger(Callback):
    """TensorBoard event files in ``<run>/tensorboard``: every ``metrics.csv`` scalar per epoch (with the learning
    rate and images per second), the run's config as text, and at the end the conv1 filters and the confusion
    matrix as images. Needs the ``tensorboard`` package (the ``[tensorboard]`` extra)."""

    def __init__(self, log_dir: Path | str | None = None) -> None:
        self.log_dir = log_dir
        self.writer: Any = None

    def on_run_start(self, run: Run) -> None:
        if not run.dist.is_main:
            return
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(self.log_dir or run.out / "tensorboard"))
        self.writer.add_text("config", "```\n" + json.dumps(run.cfg.to_dict(), indent=2) + "\n```", 0)

    def on_epoch_end(self, run: Run, epoch: int, row: dict[str, float]) -> None:
        if self.writer is None:
            return
        for key, value in row.items():
            if key != "epoch" and isinstance(value, (int, float)) and not math.isnan(value):
                group = key.split("_", 1)[0] if key.startswith(("train_", "val_", "test_")) else "run"
                self.writer.add_scalar(f"{group}/{key}", value, epoch + 1)
        self.writer.flush()

    def on_run_end(self, run: Run, result: RunResult) -> None:
        if self.writer is None:
            return
        self._images(run, result)
        self.writer.close()
        self.writer = None

    def _images(self, run: Run, result: RunResult) -> None:
        import torchvision

        step = len(result.history)
        w = scaled_kernels(conv1_weight(run.plain))
        if w.shape[1] in (1, 3):
            self.writer.add_image("conv1_filters", torchvision.utils.make_grid(w, nrow=12, padding=1), step)
        evaluation = result.test or result.final
        if evaluation is not None and evaluation.confusion is not None:
            matrix = evaluation.confusion.float()
            matrix = matrix / matrix.sum(1, keepdim=True).clamp_min(1)  # rows: true class, as shares
            self.writer.add_image("confusion", matrix[None], step)
