"""The package's top-level API functions that span layers: a model by name, randomly initialised or with published
weights (torchvision's ``get_model(name, weights=...)``)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

from torch import nn

from .artifacts.weights import get_weights, load_pretrained
from .models import registry


def create_model(
    name: str,
    *,
    num_classes: int | None = None,
    in_channels: int = 3,
    weights: str | None = None,
    progress: bool = True,
    pretrained: bool | None = None,
    **overrides: Any,
) -> nn.Module:
    """`alexnet.models.create_model`, or with ``weights`` the published weights of this variant: a tag
    (``"IMAGENET1K_V1"``, ``"DEFAULT"``) or a full name from ``alexnet weights``, downloaded and verified on first
    use (see `alexnet.artifacts.weights`). With weights, the model comes in eval mode with their classes and
    preprocessing as ``.meta``, and ``num_classes``, ``in_channels`` and overrides may only repeat the weights' own.

    ``progress`` shows the download's progress bar; ``pretrained=True`` is torchvision's old spelling of
    ``weights="DEFAULT"`` (``torch.hub.load(..., pretrained=True)`` as with torchvision's hub), with the
    FutureWarning torchvision gives.

    Raises:
        ValueError: an unknown name, a bad override or class/channel count, weights of another variant, or both
            ``weights`` and ``pretrained=True``.
        WeightsError: unknown weights, or the download or hash check failed.
    """
    if pretrained is not None:
        if not isinstance(pretrained, bool) or (pretrained and weights is not None):
            raise ValueError(
                f"give weights=... or pretrained=True, not pretrained={pretrained!r} with weights={weights!r}"
            )
        warnings.warn(
            f"pretrained={pretrained} is torchvision's old spelling: use weights={'DEFAULT' if pretrained else None!r}",
            FutureWarning,
            stacklevel=2,
        )
        weights = "DEFAULT" if pretrained else weights
    if weights is None:
        return registry.create_model(name, num_classes=num_classes, in_channels=in_channels, **overrides)
    return _pretrained(name, weights, num_classes, in_channels, overrides, progress)


def _pretrained(
    name: str, weights: str, num_classes: int | None, in_channels: int, overrides: dict, progress: bool
) -> nn.Module:
    if Path(weights).suffix in (".safetensors", ".pt", ".pth", ".pt2") or "/" in weights or os.sep in weights:
        raise ValueError(
            f"create_model(weights=...) takes the name of published weights (alexnet weights lists them); "
            f"a file such as {weights!r} loads with alexnet.load_trained(path)"
        )
    entry = get_weights(weights, variant=name)
    if entry.variant != name:
        raise ValueError(f"the weights {entry.name} are for {entry.variant}, not {name}")
    if overrides or in_channels != 3 or num_classes not in (None, entry.num_classes):
        raise ValueError(
            f"{entry.name} has {entry.num_classes} classes, 3 input channels and its own spec: to change "
            "them, fine-tune (alexnet train --weights)"
        )
    trained = load_pretrained(entry, progress)
    trained.model.meta = trained.meta  # classes and preprocessing, like torchvision's weights.meta / .transforms()
    return trained.model
