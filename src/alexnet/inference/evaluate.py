"""Evaluate a trained model, or several as one (`alexnet.inference.ensemble`), on a data set's validation split,
with the preprocessing recorded in its metadata."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import torch

from .. import native
from ..artifacts.loader import load_trained, model_file, say_model_file
from ..artifacts.program import is_int8
from ..artifacts.trained import TrainedModel
from ..data.config import DataConfig
from ..data.folder import reporting_worker_crashes
from ..data.pipeline import build_eval_loader, build_held_out_loader, training_mean_image
from ..device import compute_dtype, pick_device, pick_precision, tune_cpu_allocator
from ..errors import AlexNetError, ConfigError, IncompatibleCheckpointError, NonFiniteOutputError
from ..evaluation import Evaluation, StepSettings, evaluate
from ..files import RECORD_BYTES, read_json_input
from ..memory import check_batch
from ..models import fused_kernels, matmul_weights_to
from .ensemble import Ensemble, check_members
from .quantize import CALIBRATION_IMAGES, calibration_inputs, quantize


def evaluate_checkpoint(
    path: Path | str | Sequence[Path | str],
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
    Several paths evaluate their models as one, the softmax averaged over them (`Ensemble`); they must agree on
    classes, preprocessing and, for ``val``, the held-out images (`check_members`), and on their views unless named.
    """
    if split not in ("test", "val"):
        raise ConfigError(f"split={split!r}: choose test (the data set's own split) or val (the held-out images)")
    # a run directory as its model file (a checkpoint, which knows the run's config, for the held-out images): its
    # held_out.json is beside that file
    given = [path] if isinstance(path, (str, Path)) else list(path)
    paths = [model_file(p, checkpoint=split == "val") for p in given]
    if not paths:
        raise ConfigError("no model to evaluate")
    members = [load_trained(p) for p in paths]
    check_members(paths, members, held_out=split == "val")
    trained = members[0]
    if ten_crop is None and flip is None and translate is None:
        views = trained.eval_views
        if any(m.eval_views != views for m in members):
            raise ConfigError(
                "the models were validated with different test-time views: name the views to average over "
                "(--flip-tta, --translate-tta, --ten-crop or --single-view)"
            )
    else:
        views = {"ten_crop": bool(ten_crop), "flip": bool(flip), "translate": translate or 0}
    if views["ten_crop"] and views["translate"]:
        raise ConfigError("ten crops and translated views are exclusive: ten crops are translations already")
    int8 = precision == "int8" or any(is_int8(m) for m in members)
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
        loader, classes, held = build_held_out_loader(cfg, prep.stored_size, dev)
        for p in paths:
            _check_held_out(p, held)
    else:
        loader, classes = build_eval_loader(cfg, prep.stored_size, dev)
    trained.check_classes(classes, str(paths[0]))
    for p, taken in zip(given, paths):  # said once the models and the data set are known good
        say_model_file(p, taken)
    if precision == "int8":  # quantize on the fly, calibrated on the training split: once the data set is known good
        members = [_quantized(m, data_dir) for m in members]
    transform = prep.transform()
    if prep.mean_image:  # the per-pixel mean is not stored with the weights: recompute it, as training did
        transform.mean = training_mean_image(cfg, prep.stored_size)
    model = members[0].model if len(members) == 1 else Ensemble([m.model for m in members])
    if not int8:
        model = model.to(dev, memory_format=torch.channels_last)
    if not int8 and prec != "fp32":  # cast once, as `Predictor` does, not by autocast on every batch (the same sums)
        matmul_weights_to(model, compute_dtype(prec))
    if dev.type == "cpu" and not int8:  # the fused kernels its first batch asks for one by one, side by side
        native.prepare(fused_kernels(model, training=False))
    if dev.type == "cpu":  # a batch that cannot fit: the out-of-memory killer would end the process without a word
        value = 1 if int8 else compute_dtype(prec).itemsize
        n_views = 10 if views["ten_crop"] else (2 if views["flip"] else 1) * (3 if views["translate"] else 1)
        check_batch("evaluation", loader.largest_batch, trained.meta.image_bytes(value, n_views))
    settings = StepSettings(dev, prec, 0, len(classes), limit_batches=limit_batches, progress=progress)
    with reporting_worker_crashes(loader):
        result = evaluate(model, loader, transform, settings, **views)
    if not result.finite:
        raise NonFiniteOutputError(
            f"{', '.join(map(str, paths))} produces non-finite outputs (NaN or infinity) although its weights are "
            "finite: training diverged; no accuracy is reported from it"
        )
    result.classes = classes
    result.views = views
    return result


def _quantized(trained: TrainedModel, data_dir: str | None) -> TrainedModel:
    if is_int8(trained):
        return trained
    quantized, _ = quantize(
        trained,
        calibration_inputs(trained, CALIBRATION_IMAGES, data_dir),
        record={"calibration_split": "train", "calibration_seed": 0},
    )
    return quantized


def _check_held_out(checkpoint: Path, held: list[int]) -> None:
    """The images about to be evaluated must be the ones the run held out (its ``held_out.json``, when present)."""
    record = checkpoint.parent / "held_out.json"
    if not record.is_file():
        return
    try:
        tree = read_json_input(record, RECORD_BYTES, "held-out record")
    except (OSError, AlexNetError) as err:
        raise IncompatibleCheckpointError(str(err)) from None
    indices = tree.get("indices") if isinstance(tree, dict) else None
    if indices != held:
        raise IncompatibleCheckpointError(
            f"the held-out images recomputed for {checkpoint} differ from the run's record {record}: the data set "
            "changed since training, so these would not be the images the run validated on"
        )
