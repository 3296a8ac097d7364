"""The evaluation loop, shared by training (validation after each epoch) and inference (``alexnet eval``), and the
settings both loops take."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .data.batch import BatchTransform
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


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Loader,
    transform: BatchTransform,
    settings: StepSettings,
    ten_crop: bool = False,
    flip: bool = False,
) -> dict:
    """Loss, top-1/top-5 accuracy (percent), per-class accuracy and the confusion matrix.

    With ``ten_crop`` each image is scored by the softmax averaged over its ten crops (§4.1), with ``flip`` over the
    centre crop and its mirror (test-time augmentation at 2× the cost, not 10×); the loss is the negative log of
    that average.
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
        x = transform.ten_crop(images) if ten_crop else transform.eval(images)
        views = 10 if ten_crop else 1 + flip
        if views == 2:
            x = torch.cat([x, x.flip(3)])  # view-major rows, as ten_crop's: (2·B, C, H, W)
        with autocast(settings.device, settings.precision):
            logits = model(x).float()
        probs = logits.softmax(1)
        if views > 1:
            probs = probs.view(views, b, c).mean(0)  # view-major rows: see BatchTransform.ten_crop
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
    per_class = (matrix.diag() / matrix.sum(1).clamp_min(1)).mul(100).tolist()
    acc1 = 100 * matrix.diag().sum().item() / max(seen, 1)
    acc5 = 100 * top5_hits.item() / max(seen, 1)
    return {
        "loss": loss_sum / max(seen, 1),
        "acc1": acc1,
        "acc5": acc5,
        "err1": 100 - acc1,
        "err5": 100 - acc5,
        "per_class_acc": per_class,
        "confusion": matrix,
        "images": int(seen),
    }
