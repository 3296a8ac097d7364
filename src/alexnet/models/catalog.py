"""The variants as data, without torch: list them, resolve one's spec, describe it (parameters, MACs, input size).

What ``alexnet models`` and a config's validation need; building a network is `alexnet.models.registry`'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..names import did_you_mean
from .specs import VARIANTS, ArchSpec, apply_overrides


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
    check_counts(num_classes, in_channels)
    spec = get_spec(name, **overrides)
    params, macs = spec.parameters(num_classes, in_channels), spec.macs(num_classes, in_channels)
    return ModelInfo(name, params, macs, spec.input_size, spec.note)


def check_counts(num_classes: int, in_channels: int) -> None:
    """Raises ValueError unless both counts are positive ints (a bool is not one)."""
    for label, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{label} must be a positive int, got {value!r}")
