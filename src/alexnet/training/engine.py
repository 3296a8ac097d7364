"""The training step loop: a pure function of a model, a loader and settings, returning metrics (evaluation is
`alexnet.evaluation`'s)."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..data.augment import Augment
from ..data.batch import BatchTransform, step_generator
from ..data.pipeline import Loader
from ..device import autocast
from ..errors import NonFiniteLossError
from ..evaluation import StepSettings, no_bar, synchronize
from .optim import Schedule
from .state import EpochTotals

log = logging.getLogger(__name__)


def training_loss(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy against class indices (B,) or class probabilities (B, classes) from MixUp/CutMix; label
    smoothing mixes the targets with the uniform distribution, ``(1 − ε)·target + ε / classes``, in both cases."""
    return F.cross_entropy(logits.float(), targets, label_smoothing=label_smoothing)


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
    augment: Augment | None = None,
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
    bar = tqdm(total=total, initial=start_step, desc=f"epoch {epoch + 1}", disable=no_bar(settings), leave=False)
    tick = time.perf_counter()
    for step, (images, labels) in enumerate(loader.batches(epoch, start_step), start_step):
        if step >= total:
            break
        if labels.numel() and (labels.min() < 0 or labels.max() >= settings.num_classes):
            raise ValueError(f"label outside [0, {settings.num_classes}) in epoch {epoch + 1}, batch {step}")
        generator = step_generator(settings.seed, epoch, step)
        mixing = augment is not None and augment.active
        if mixing:
            images = augment.before(images, generator)
        x = transform.train(images, generator)
        targets = labels
        if mixing:
            x, targets = augment.after(x, labels, generator)
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
                loss = training_loss(logits, targets, settings.label_smoothing)
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
        synchronize(settings.device)
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
