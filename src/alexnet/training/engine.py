"""The training step loop and evaluation: pure functions of a model, a loader and settings, returning metrics."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..data.batch import BatchTransform, step_generator
from ..data.pipeline import Loader
from ..device import autocast
from ..errors import NonFiniteLossError
from .optim import Schedule
from .state import EpochTotals

log = logging.getLogger(__name__)


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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _no_bar(settings: StepSettings) -> bool | None:
    """tqdm's ``disable``: off when asked, and (None) when stderr is not a terminal, so logs get no bar frames."""
    return None if settings.progress else True


def train_one_epoch(
    model: nn.Module,
    loader: Loader,
    transform: BatchTransform,
    optimizer: torch.optim.Optimizer,
    schedule: Schedule,
    settings: StepSettings,
    epoch: int,
    start_step: int = 0,
    scaler: torch.amp.GradScaler | None = None,
    on_step: Callable[[int], None] | None = None,
    totals: EpochTotals | None = None,
) -> dict[str, float]:
    """One pass over ``loader`` from batch ``start_step``, adding to ``totals`` (the running sums of the epoch,
    which a resumed epoch brings from its checkpoint; ``on_step`` may save them).

    Returns:
        loss (mean cross-entropy), acc1 (percent), img_s (images per second), data_s and compute_s (seconds
        spent waiting for batches and computing) over the whole epoch, and steps run now.

    Raises:
        NonFiniteLossError: the loss became NaN or infinite.
    """
    model.train()
    total = len(loader) if settings.limit_batches is None else min(len(loader), settings.limit_batches)
    sums = totals if totals is not None else EpochTotals()
    stuck_at = math.log(settings.num_classes)
    bar = tqdm(total=total, initial=start_step, desc=f"epoch {epoch + 1}", disable=_no_bar(settings), leave=False)
    tick = time.perf_counter()
    for step, (images, labels) in enumerate(loader.batches(epoch, start_step), start_step):
        if step >= total:
            break
        if labels.numel() and (labels.min() < 0 or labels.max() >= settings.num_classes):
            raise ValueError(f"label outside [0, {settings.num_classes}) in epoch {epoch + 1}, batch {step}")
        x = transform.train(images, step_generator(settings.seed, epoch, step))
        got_batch = time.perf_counter()
        lr = schedule.set(epoch, step)
        # Gradient accumulation: an optimizer step every `accumulate` batches (the epoch's last group may be
        # shorter); DDP skips its all-reduce on the inner batches.
        n = settings.accumulate
        first, last = step % n == 0, (step + 1) % n == 0 or step + 1 == total
        group = min(n, total - (step - step % n))
        with model.no_sync() if not last and hasattr(model, "no_sync") else contextlib.nullcontext():
            with autocast(settings.device, settings.precision):
                logits = model(x)
                loss = F.cross_entropy(logits.float(), labels, label_smoothing=settings.label_smoothing)
            value = loss.item()
            if not math.isfinite(value):
                raise NonFiniteLossError(
                    f"loss became {value} at epoch {epoch + 1}, batch {step} (lr {lr:g}); the last good checkpoint "
                    "is kept. Lower the learning rate, check the data, or try --precision fp32"
                )
            if first:
                optimizer.zero_grad(set_to_none=True)
            part = loss / group if group > 1 else loss
            (scaler.scale(part) if scaler is not None else part).backward()
        if last:
            if scaler is not None:
                scaler.unscale_(optimizer)  # before clipping, so the norm is of the true gradients
            if settings.clip_grad_norm:
                nn.utils.clip_grad_norm_(model.parameters(), settings.clip_grad_norm)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
        _sync(settings.device)
        done = time.perf_counter()
        n = labels.numel()
        sums.loss_sum += value * n
        sums.correct += (logits.argmax(1) == labels).sum().item()
        sums.seen += n
        sums.data_s += got_batch - tick
        sums.compute_s += done - got_batch
        tick = done
        if step == 300 and epoch == 0 and sums.loss_sum / sums.seen > 0.95 * stuck_at:
            log.warning(
                "loss is still %.3f ≈ ln(%d) after 300 steps: the model is not learning. Usual causes: learning "
                "rate too high (AlexNet without BN wants ~0.01), bad init, labels not matching images, or an "
                "unlucky seed",
                sums.loss_sum / sums.seen,
                settings.num_classes,
            )
        bar.set_postfix(loss=f"{value:.3f}", acc=f"{100 * sums.correct / sums.seen:.1f}")
        bar.update()
        if on_step is not None:
            on_step(step)
    bar.close()
    return {**sums.metrics(), "steps": total - start_step}


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
    bar = tqdm(total=total, desc="eval", disable=_no_bar(settings), leave=False)
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
