"""Evaluate a trained model on a data set's validation split, with the preprocessing recorded in its metadata."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from .. import native
from ..artifacts.loader import load_trained
from ..artifacts.program import is_int8
from ..artifacts.trained import display_label
from ..data.config import DataConfig
from ..data.folder import reporting_worker_crashes
from ..data.pipeline import build_eval_loader, build_held_out_loader, training_mean_image
from ..device import pick_device, pick_precision, tune_cpu_allocator
from ..errors import ConfigError, IncompatibleCheckpointError, NonFiniteOutputError
from ..evaluation import Evaluation, StepSettings, evaluate
from ..models import fused_kernels
from .quantize import CALIBRATION_IMAGES, calibration_inputs, quantize


def evaluate_checkpoint(
    path: Path | str,
    *,
    dataset: str | None = None,
    data_dir: str | None = None,
    ten_crop: bool | None = None,
    flip: bool | None = None,
    translate: int | None = None,
    device: str = "auto",
    precision: str = "auto",
    batch_size: int | None = None,
    limit_batches: int | None = None,
    progress: bool = True,
    split: str = "test",
) -> Evaluation:
    """Top-1/top-5 accuracy, loss, per-class accuracy and confusion matrix of a trained model on a validation split.

    The data set defaults to the one the model was trained on; its preprocessing (mean, std, crop) always comes
    from the model's metadata. ``ten_crop``, ``flip`` and ``translate`` average the softmax over views (see
    `evaluate`); when none is given, the views the run scored its own validation with (`TrainedModel.eval_views`),
    so the figure matches what training logged. Naming any of them gives exactly the views named.
    ``split`` is ``test`` (the data set's own validation or test split) or ``val`` (the images the training run held
    out of its training split with ``data.val_split``, checked against the run's ``held_out.json`` when it is there).
    """
    if split not in ("test", "val"):
        raise ConfigError(f"split={split!r}: choose test (the data set's own split) or val (the held-out images)")
    trained = load_trained(path)
    if ten_crop is None and flip is None and translate is None:
        views = trained.eval_views
    else:
        views = {"ten_crop": bool(ten_crop), "flip": bool(flip), "translate": translate or 0}
    if views["ten_crop"] and views["translate"]:
        raise ConfigError("ten crops and translated views are exclusive: ten crops are translations already")
    int8 = precision == "int8" or is_int8(trained)
    if precision == "int8" and not is_int8(trained):  # quantize on the fly, calibrated on the training split
        trained, _ = quantize(
            trained,
            calibration_inputs(trained, CALIBRATION_IMAGES, data_dir),
            record={"calibration_split": "train", "calibration_seed": 0},
        )
    prep = trained.preprocessing
    # Only the validation split is read; the preprocessing is the one recorded with the weights.
    cfg = dataclasses.replace(trained.config.data) if trained.config else DataConfig()
    cfg.dataset = dataset or prep.dataset or cfg.dataset
    cfg.data_dir = data_dir or trained.data_dir
    cfg.eval_batch_size = batch_size or cfg.eval_batch_size
    dev = torch.device("cpu") if int8 else pick_device(device)  # the X86 int8 kernels run on the CPU
    prec = "fp32" if int8 else pick_precision(precision, dev)  # int8 graphs run as they are: no autocast
    if dev.type == "cpu":
        tune_cpu_allocator()  # as training does: each batch's large activations otherwise fault their pages in anew
    if split == "val":
        if trained.config is None:
            raise ConfigError(
                f"{path} carries no training config: only a run's .pt checkpoint knows its held-out split"
            )
        loader, classes, held = build_held_out_loader(cfg, prep.stored_size, dev)
        _check_held_out(Path(path), held)
    else:
        loader, classes = build_eval_loader(cfg, prep.stored_size, dev)
    if classes != trained.classes:
        shown = [display_label(c) for c in classes[:4]]
        raise IncompatibleCheckpointError(
            f"{path} was trained on {len(trained.classes)} classes {trained.meta.labels[:4]}…; this data set has "
            f"{len(classes)}: {shown}…"
        )
    transform = prep.transform()
    if prep.mean_image:  # the per-pixel mean is not stored with the weights: recompute it, as training did
        transform.mean = training_mean_image(cfg, prep.stored_size)
    model = trained.model if int8 else trained.model.to(dev, memory_format=torch.channels_last)
    if dev.type == "cpu" and not int8:  # the fused kernels its first batch asks for one by one, side by side
        native.prepare(fused_kernels(model, training=False))
    settings = StepSettings(dev, prec, 0, len(classes), limit_batches=limit_batches, progress=progress)
    with reporting_worker_crashes(loader):
        result = evaluate(model, loader, transform, settings, **views)
    if not result.finite:
        raise NonFiniteOutputError(
            f"{path} produces non-finite outputs (NaN or infinity) although its weights are finite: training "
            "diverged; no accuracy is reported from it"
        )
    result.classes = classes
    result.views = views
    return result


def _check_held_out(checkpoint: Path, held: list[int]) -> None:
    """The images about to be evaluated must be the ones the run held out (its ``held_out.json``, when present)."""
    record = checkpoint.parent / "held_out.json"
    if not record.is_file():
        return
    try:
        indices = json.loads(record.read_text()).get("indices")
    except (OSError, ValueError, AttributeError) as err:
        raise IncompatibleCheckpointError(f"{record} is unreadable ({err})") from None
    if indices != held:
        raise IncompatibleCheckpointError(
            f"the held-out images recomputed for {checkpoint} differ from the run's record {record}: the data set "
            "changed since training, so these would not be the images the run validated on"
        )
