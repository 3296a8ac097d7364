"""Load a trained model from a checkpoint or safetensors weights, and evaluate it on a data set."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import Config, DataConfig, config_from_dict
from ..data.batch import BatchTransform
from ..data.folder import reporting_worker_crashes
from ..data.pipeline import build_eval_loader, training_mean_image
from ..device import pick_device, pick_precision
from ..errors import AlexNetError, CorruptCheckpointError, IncompatibleCheckpointError, UnsafeCheckpointError
from ..models import model_from_config
from ..training.checkpoint import load_checkpoint, load_model_state, load_weights
from ..training.engine import StepSettings, evaluate


@dataclass
class Trained:
    """A model with everything needed to feed it: classes, preprocessing (``data``), and its training config."""

    model: nn.Module
    classes: list[str]
    data: dict[str, Any]
    config: Config | None
    metrics: dict[str, Any]


def load_trained(path: Path | str) -> Trained:
    """Rebuild a model from ``best.safetensors`` / ``*.safetensors`` weights or a ``.pt`` training checkpoint.

    Raises:
        FileNotFoundError, CorruptCheckpointError, UnsafeCheckpointError, IncompatibleCheckpointError.
    """
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            tensors, meta = load_weights(path)
            model = model_from_config(meta["model"])
            load_model_state(model, tensors, str(path))
            return Trained(model.eval(), list(meta["classes"]), dict(meta["data"]), None, meta.get("metrics", {}))
        state = load_checkpoint(path)
        model = model_from_config(state["model_config"])
        load_model_state(model, state["model"], str(path))
        config = config_from_dict(state["config"])
        history = state.get("history") or [{}]
        return Trained(model.eval(), list(state["classes"]), dict(state["data_meta"]), config, history[-1])
    except (KeyError, TypeError, ValueError, AlexNetError) as err:
        if isinstance(err, (IncompatibleCheckpointError, UnsafeCheckpointError, CorruptCheckpointError)):
            raise
        raise CorruptCheckpointError(f"{path} has invalid metadata ({type(err).__name__}: {err})") from None


def evaluate_checkpoint(
    path: Path | str,
    *,
    dataset: str | None = None,
    data_dir: str | None = None,
    ten_crop: bool = False,
    device: str = "auto",
    precision: str = "auto",
    batch_size: int | None = None,
    limit_batches: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Top-1/top-5 accuracy, loss, per-class accuracy and confusion matrix of a trained model on a validation split.

    The data set defaults to the one the model was trained on; its preprocessing (mean, std, crop) always comes
    from the model's metadata.
    """
    trained = load_trained(path)
    meta = trained.data
    # Only the validation split is read; the preprocessing is the one recorded with the weights.
    cfg = dataclasses.replace(trained.config.data) if trained.config else DataConfig()
    cfg.dataset = dataset or meta.get("dataset", cfg.dataset)
    cfg.data_dir = data_dir or cfg.data_dir
    cfg.eval_batch_size = batch_size or cfg.eval_batch_size
    dev = pick_device(device)
    prec = pick_precision(precision, dev)
    loader, classes = build_eval_loader(cfg, meta["stored_size"], dev)
    if classes != trained.classes:
        raise IncompatibleCheckpointError(
            f"{path} was trained on classes {trained.classes[:4]}…; this data set has {classes[:4]}…"
        )
    transform = BatchTransform.from_meta(meta, trained.model.in_channels)
    if meta.get("mean_image"):  # the per-pixel mean is not stored with the weights: recompute it, as training did
        transform.mean = training_mean_image(cfg, meta["stored_size"])
    model = trained.model.to(dev, memory_format=torch.channels_last)
    settings = StepSettings(dev, prec, 0, len(classes), limit_batches=limit_batches, progress=progress)
    with reporting_worker_crashes(loader):
        result = evaluate(model, loader, transform, settings, ten_crop=ten_crop)
    result["classes"] = classes
    return result
