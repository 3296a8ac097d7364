"""Public model API: create a variant by name, list variants, describe one (parameters, MACs, input size)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .alexnet import AlexNet
from .specs import OVERRIDABLE, VARIANTS, ArchSpec, apply_overrides


def list_models() -> list[str]:
    """Names of every registered variant, sorted."""
    return sorted(VARIANTS)


def get_spec(name: str, **overrides: Any) -> ArchSpec:
    """The resolved `ArchSpec` of ``name`` with ``overrides`` applied.

    Raises:
        ValueError: for an unknown name or a bad override, naming what is valid.
    """
    if name not in VARIANTS:
        raise ValueError(f"unknown model {name!r}; available: {list_models()}")
    return apply_overrides(name, VARIANTS[name], overrides)


def create_model(name: str, *, num_classes: int | None = None, in_channels: int = 3, **overrides: Any) -> nn.Module:
    """Build a variant, randomly initialised, on the current default device (the caller moves it). With published
    weights: `alexnet.create_model`.

    Args:
        name: one of `list_models()`.
        num_classes: size of the last layer (default 1000, or the weights' class count).
        in_channels: image channels.
        weights: published weights of this variant to load: a tag (``"IMAGENET1K_V1"``, ``"DEFAULT"``) or a full
            name from ``alexnet weights``, downloaded and verified on first use (see `alexnet.artifacts.weights`).
            The model comes in eval mode, with the weights' classes and preprocessing as ``.meta``.
        **overrides: spec fields to change; see ``alexnet.models.specs.OVERRIDABLE``.

    Returns:
        An `AlexNet` whose ``.config`` records how to rebuild it.

    Raises:
        ValueError: for an unknown name, bad override or bad class/channel count.
    """
    num_classes = 1000 if num_classes is None else num_classes
    for label, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{label} must be a positive int, got {value!r}")
    model = AlexNet(get_spec(name, **overrides), num_classes=num_classes, in_channels=in_channels)
    model.config = {
        "variant": name,
        "num_classes": num_classes,
        "in_channels": in_channels,
        "overrides": dict(overrides),
    }
    return model


def model_from_config(config: dict[str, Any]) -> nn.Module:
    """Rebuild a model from its ``.config`` dict (as saved with weights and checkpoints)."""
    return create_model(
        config["variant"],
        num_classes=config["num_classes"],
        in_channels=config["in_channels"],
        **config.get("overrides", {}),
    )


@dataclass(frozen=True)
class ModelInfo:
    """What ``alexnet models`` shows for one variant."""

    name: str
    params: int
    macs: int
    input_size: int
    note: str


def model_info(name: str, *, num_classes: int = 1000, in_channels: int = 3, **overrides: Any) -> ModelInfo:
    """Parameters and multiply-accumulates of one forward pass of a single image at the default input size.

    MACs come from ``torch.utils.flop_counter`` (convolutions and matmuls; FLOPs / 2) on the meta device, so no
    memory is allocated and no arithmetic is done.
    """
    # Imported here: it imports triton, a tenth of a second that every `import alexnet` paid for this one function.
    from torch.utils.flop_counter import FlopCounterMode

    spec = get_spec(name, **overrides)
    with torch.device("meta"):
        model = create_model(name, num_classes=num_classes, in_channels=in_channels, **overrides)
        x = torch.empty(1, in_channels, spec.input_size, spec.input_size)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.eval()(x)
    params = sum(p.numel() for p in model.parameters())
    return ModelInfo(name, params, counter.get_total_flops() // 2, spec.input_size, spec.note)


__all__ = [
    "OVERRIDABLE",
    "ModelInfo",
    "create_model",
    "get_spec",
    "list_models",
    "model_from_config",
    "model_info",
]
