"""Build a variant by name (`create_model`), or again from its saved ``.config`` (`model_from_config`)."""

from __future__ import annotations

from typing import Any

from torch import nn

from .alexnet import AlexNet
from .catalog import check_counts, get_spec


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
    check_counts(num_classes, in_channels)
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


__all__ = ["create_model", "model_from_config"]
