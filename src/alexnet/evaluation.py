"""The evaluation loop, shared by training (validation after each epoch) and inference (``alexnet eval``), and the
settings both loops take."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .data.batch import BatchTransform, tta_views
from .data.pipeline import Loader
from .device import autocast


@dataclass
class StepSettings:
    device: torch.device
    precision: str
    seed: int
    num_classes: int
    label_smoothing: float = 0.0
    clip_grad_norm: float | None = None
    limit_batches: int | None = None
    progress: bool = True
    sync: bool = True  # evaluation: sum counts across processes (each saw its own images)
    accumulate: int = 1  # batches per optimizer step


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def no_bar(settings: StepSettings) -> bool | None:
    """tqdm's ``disable``: off when asked, and (None) when stderr is not a terminal, so logs get no bar frames."""
    return None if settings.progress else True


@dataclass
class Evaluation:
    """What one pass over a split measured.

    Attributes:
        loss: mean cross-entropy (of the view-averaged softmax with several views).
        acc1, acc5: top-1 and top-5 accuracy, percent.
        per_class_acc: top-1 accuracy of each class, percent, in class order; NaN for a class the split holds no
            image of.
        confusion: (classes, classes) int64 counts; rows are the true class, columns the predicted one.
        images: how many images were scored.
        classes: the class names, where the caller knows them.
        views: the test-time views scored (``ten_crop``, ``flip``, ``translate``), where the caller says.
    """

    loss: float
    acc1: float
    acc5: float
    per_class_acc: list[float] = field(default_factory=list)
    confusion: torch.Tensor | None = None
    images: int = 0
    classes: list[str] = field(default_factory=list)
    views: dict[str, Any] = field(default_factory=dict)

    @property
    def err1(self) -> float:
        return 100 - self.acc1

    @property
    def err5(self) -> float:
        return 100 - self.acc5

    @property
    def finite(self) -> bool:
        return math.isfinite(self.loss)

    def summary(self) -> dict[str, float | int]:
        """The scalar figures, for JSON and CSV."""
        return {
            "loss": self.loss,
            "acc1": self.acc1,
            "acc5": self.acc5,
            "err1": self.err1,
            "err5": self.err5,
            "images": self.images,
        }

    @classmethod
    def skipped(cls) -> Evaluation:
        """An epoch that was not validated (``train.val_every``): NaN figures, as metrics.csv shows them."""
        return cls(math.nan, math.nan, math.nan)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Loader,
    transform: BatchTransform,
    settings: StepSettings,
    ten_crop: bool = False,
    flip: bool = False,
    translate: int = 0,
) -> Evaluation:
    """Loss, top-1/top-5 accuracy (percent), per-class accuracy and the confusion matrix.

    With ``ten_crop`` each image is scored by the softmax averaged over its ten crops (§4.1), with ``flip`` over the
    centre crop and its mirror (test-time augmentation at 2× the cost, not 10×), with ``translate`` also over
    shifted views (`alexnet.data.batch.tta_views`); the loss is the negative log of that average.
    """
    model.eval()
    c = settings.num_classes
    # Counts, summed over processes at the end: the (true, predicted) confusion matrix and top-5 hits. Two bincounts
    # rather than torchmetrics, whose import (it pulls in matplotlib) cost every training process 0.7 s.
    confusion = torch.zeros(c * c, dtype=torch.int64, device=settings.device)
    top5_hits = torch.zeros((), dtype=torch.int64, device=settings.device)
    loss_sum = seen = 0.0
    total = len(loader) if settings.limit_batches is None else min(len(loader), settings.limit_batches)
    bar = tqdm(total=total, desc="eval", disable=no_bar(settings), leave=False)
    for step, (images, labels) in enumerate(loader.batches(0)):
        if step >= total:
            break
        b = labels.numel()
        if ten_crop:
            x, weights = transform.ten_crop(images), torch.full((10,), 0.1)
        else:  # view-major rows, as ten_crop's: (V·B, C, H, W)
            x, weights = tta_views(transform.eval(images), flip, translate)
        with autocast(settings.device, settings.precision):
            logits = model(x).float()
        probs = logits.softmax(1)
        if len(weights) > 1:  # view-major rows: see BatchTransform.ten_crop
            probs = (probs.view(len(weights), b, c) * weights.to(probs.device)[:, None, None]).sum(0)
        loss_sum += F.nll_loss(probs.clamp_min(1e-12).log(), labels, reduction="sum").item()
        seen += b
        confusion += torch.bincount(labels * c + probs.argmax(1), minlength=c * c)
        top5_hits += (probs.topk(min(5, c), dim=1).indices == labels[:, None]).any(1).sum()
        bar.update()
    bar.close()
    if settings.sync and torch.distributed.is_available() and torch.distributed.is_initialized():
        # Each process saw its own images once (no padding): sum the loss and the counts.
        totals = torch.tensor([loss_sum, seen], dtype=torch.float64, device=settings.device)
        for t in (totals, confusion, top5_hits):
            torch.distributed.all_reduce(t)
        loss_sum, seen = totals.tolist()
    matrix = confusion.view(c, c).cpu()  # rows: true class, columns: predicted
    # A class the split holds no image of has no accuracy (NaN: null in JSON, "no images" when shown), not 0%:
    # a split without it (a folder's, a --limit-val-batches prefix) said the model got all of them wrong.
    counts = matrix.sum(1)
    per_class = torch.where(counts > 0, matrix.diag() / counts.clamp_min(1) * 100, math.nan).tolist()
    acc1 = 100 * matrix.diag().sum().item() / max(seen, 1)
    acc5 = 100 * top5_hits.item() / max(seen, 1)
    return Evaluation(loss_sum / max(seen, 1), acc1, acc5, per_class, matrix, int(seen))
