"""Public model API: create a variant by name, list variants, describe one (parameters, MACs, input size)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from ..names import did_you_mean
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
        raise ValueError(f"unknown model {name!r}; {did_you_mean(name, VARIANTS)}available: {list_models()}")
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
    _check_counts(num_classes, in_channels)
    model = AlexNet(get_spec(name, **overrides), num_classes=num_classes, in_channels=in_channels)
    model.config = {
        "variant": name,
        "num_classes": num_classes,
        "in_channels": in_channels,
        "overrides": dict(overrides),
    }
    return model


def _check_counts(num_classes: int, in_channels: int) -> None:
    for label, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{label} must be a positive int, got {value!r}")


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
    """Parameters and multiply-accumulates of one forward pass of a single image at the default input size, read
    from the spec (`ArchSpec.parameters`, `ArchSpec.macs`): no network is built (the tests hold both to the built
    network's parameters and to ``torch.utils.flop_counter``'s count of its forward).

    Raises:
        ValueError: as `create_model`.
    """
    _check_counts(num_classes, in_channels)
    spec = get_spec(name, **overrides)
    params, macs = spec.parameters(num_classes, in_channels), spec.macs(num_classes, in_channels)
    return ModelInfo(name, params, macs, spec.input_size, spec.note)


__all__ = [
    "OVERRIDABLE",
    "ModelInfo",
    "create_model",
    "get_spec",
    "list_models",
    "model_from_config",
    "model_info",
]
