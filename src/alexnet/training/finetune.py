"""Starting from pretrained weights: the network and preprocessing they need, their tensors copied in (the last
layer replaced when the classes differ), some layers frozen, and a lower learning rate for what was pretrained; or
conv1 started from the data (patch whitening)."""

from __future__ import annotations

import dataclasses
import logging

import torch
from torch import nn

from ..artifacts.loader import load_network
from ..artifacts.trained import TrainedModel
from ..config import Config
from ..data.pipeline import Data
from ..errors import ConfigError, IncompatibleCheckpointError
from ..models.init import PatchCovariance

log = logging.getLogger(__name__)


def adopt_pretrained(cfg: Config) -> tuple[Config, TrainedModel | None]:
    """``cfg`` with the network and input preprocessing of ``cfg.model.weights`` (a registry name or a file), and
    the loaded weights; ``cfg`` unchanged and None without weights.

    The network becomes the weights' variant and overrides (whatever ``model.name`` said: the tensors define it),
    and the data is normalised as the weights expect: their mean, std and pixel scale, and their stored size
    unless ``data.resize`` is set.
    """
    if not cfg.model.weights:
        return cfg, None
    pretrained = load_network(cfg.model.weights, "to start training from")
    desc, prep = pretrained.meta.model, pretrained.preprocessing
    if (cfg.model.name, cfg.model.overrides) != (desc.variant, desc.overrides):
        log.info("model %s %s comes from the weights %s", desc.variant, desc.overrides or "", cfg.model.weights)
    model = dataclasses.replace(cfg.model, name=desc.variant, overrides=dict(desc.overrides))
    data = dataclasses.replace(
        cfg.data,
        mean=list(prep.mean),
        std=list(prep.std) if prep.std is not None else None,
        normalize="meanstd" if prep.std is not None else "mean",
        pixel_scale=prep.pixel_scale,
        resize=cfg.data.resize or prep.stored_size,
    )
    return dataclasses.replace(cfg, model=model, data=data), pretrained


def transfer(model: nn.Module, pretrained: TrainedModel, classes: list[str]) -> set[str]:
    """Copy ``pretrained``'s tensors into ``model`` (same variant, freshly built for ``classes``). The last layer is
    kept only when the class lists are equal; otherwise it stays freshly initialised.

    Returns:
        The names of ``model``'s parameters that were not pretrained (the new last layer, if any).

    Raises:
        IncompatibleCheckpointError: the input channels differ (a grayscale data set and colour weights).
    """
    source = pretrained.model.state_dict()
    own = model.state_dict()
    if pretrained.meta.model.in_channels != getattr(model, "in_channels", pretrained.meta.model.in_channels):
        raise IncompatibleCheckpointError(
            f"the weights {pretrained.source} take {pretrained.meta.model.in_channels}-channel images and this data "
            f"set has {model.in_channels}: fine-tune on a data set with the same channels"
        )
    head = [n for n, _ in model.named_parameters()][-2:]  # the last Linear's weight and bias
    same_classes = list(classes) == pretrained.classes
    new = set() if same_classes else set(head)
    state = {k: v for k, v in source.items() if k not in new}
    wrong = [k for k, v in state.items() if k not in own or own[k].shape != v.shape]
    if wrong:
        raise IncompatibleCheckpointError(f"{pretrained.source} does not fit this model (mismatched: {wrong[:3]})")
    with torch.no_grad():
        for k, v in state.items():
            own[k].copy_(v)
    if new:
        log.info(
            "replaced the last layer (%s): %d pretrained classes → %d classes of this data set; the rest is pretrained",
            head[0].removesuffix(".weight"),
            pretrained.meta.model.num_classes,
            len(classes),
        )
    return new


def freeze(model: nn.Module, what: str | int | None) -> list[str]:
    """Stop training part of ``model``: ``features`` (every convolution), or ``N`` (the first N weight layers,
    convolutions then fully connected ones). Returns the frozen parameters' names.

    Raises:
        ConfigError: not ``features`` or a depth from 1 to the number of weight layers minus one.
    """
    if what is None or what == "":  # not `not what`: a depth of 0 is refused as "0" is, not read as none
        return []
    given, what = what, str(what)  # N from a recipe or --set is a number, from --freeze a string
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    if what == "features":
        depth = sum(isinstance(m, nn.Conv2d) for m in layers)
    elif what.isdigit() and 1 <= int(what) < len(layers):
        depth = int(what)
    else:
        raise ConfigError(f"model.freeze={given!r}: choose 'features' or a depth from 1 to {len(layers) - 1}")
    frozen_ids = {id(p) for m in layers[:depth] for p in m.parameters()}
    frozen = [n for n, p in model.named_parameters() if id(p) in frozen_ids]
    for _, p in model.named_parameters():
        if id(p) in frozen_ids:
            p.requires_grad_(False)
    log.info("froze %d of %d weight layers (%d tensors): they keep their weights", depth, len(layers), len(frozen))
    return frozen


def whiten_conv1(model: nn.Module, data: Data, images: int = 2048) -> None:
    """Start ``model``'s first convolution as patch whitening of the first ``images`` training images of epoch 0
    (normalised as evaluation normalises them), airbench's initialisation (`PatchCovariance`)."""
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    cov, seen = PatchCovariance(conv), 0
    # The whole split's order, not this process's shard: every process starts from the same conv1 (under hybrid
    # parallelism the conv replicas are never broadcast, only their gradients averaged).
    whole = dataclasses.replace(data.train, rank=0, world=1)
    for batch, _ in whole.batches(0):
        x = data.eval_transform.eval(batch[: images - seen])
        cov.add(x)
        seen += len(x)
        if seen >= images:
            break
    cov.whiten_(eps=5e-4)
    log.info("conv1 starts as the whitening of %d patches of %d training images", cov.count, seen)
