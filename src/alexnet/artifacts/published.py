"""The published weights' catalog, the torchvision way: entries that each carry their URL, hash, size, licence,
the preprocessing and categories they need and the metrics their publisher reports, and what torch.hub's cache holds
of each. Free of torch, so that listing them (``alexnet weights``) answers at once; `alexnet.artifacts.weights`
downloads, verifies and loads them.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..data.config import IMAGENET_MEAN, IMAGENET_STD
from ..errors import AlexNetError

if TYPE_CHECKING:
    from .trained import ModelMeta


class WeightsError(AlexNetError):
    """Weights could not be found, downloaded or verified; the message says what was expected and where."""


@dataclass(frozen=True)
class Weights:
    """One published set of weights.

    Attributes:
        name: ``variant.TAG``, e.g. ``alexnet_owt.IMAGENET1K_V1`` (what ``--weights`` takes).
        url: where the publisher serves the file (``file://`` works too).
        file_name: its name in the cache.
        digest: ``sha256:HEX`` or ``sha1:HEX`` as published; torchvision publishes only the first 8 hex digits of
            the SHA-256 (in the file name), which is all that can be checked for its files.
        size_mb: the file's size as published (MiB), for display.
        file_format: ``state_dict`` (a torch.save'd dict of tensors), ``safetensors`` (ours) or ``caffemodel``.
        overrides: spec overrides the network needs (Caffe's LRN).
        preprocessing: `alexnet.artifacts.trained.Preprocessing` fields, as the publisher evaluated.
        categories: returns the class names (read when needed: ImageNet's 1,000 come from torchvision).
        metrics: the publisher's reported metrics; ``metrics_source`` says where they are reported.
        licence: the terms the weights come under.
    """

    name: str
    url: str
    file_name: str
    digest: str
    size_mb: float
    file_format: str
    preprocessing: dict[str, Any]
    categories: Callable[[], list[str]]
    metrics: dict[str, float] = field(default_factory=dict)
    metrics_source: str = ""
    licence: str = ""
    overrides: dict[str, Any] = field(default_factory=dict)
    num_classes: int = 1000

    @property
    def variant(self) -> str:
        return self.name.split(".", 1)[0]

    @property
    def tag(self) -> str:
        return self.name.split(".", 1)[1]

    def cache_path(self) -> Path:
        return cache_dir() / self.file_name

    def meta(self) -> ModelMeta:
        """The artifact metadata of these weights (validated like any saved model's)."""
        from .trained import ModelMeta  # torch's import, paid only by a load

        return ModelMeta.build(
            {
                "variant": self.variant,
                "num_classes": self.num_classes,
                "in_channels": 3,
                "overrides": dict(self.overrides),
            },
            self.categories(),
            {**self.preprocessing, "dataset": "imagenet"},
            {**self.metrics, "source": self.metrics_source},
            {"weights": self.name, "url": self.url, "digest": self.digest, "licence": self.licence},
            self.name,
        )


def _imagenet() -> list[str]:
    from .caffe import imagenet_categories

    return imagenet_categories()


_REGISTRY: dict[str, Weights] = {}


def register(weights: Weights) -> Weights:
    """Add ``weights`` to the registry (replacing an entry of the same name) and return it."""
    if "." not in weights.name:
        raise ValueError(f"weights name {weights.name!r} must be 'variant.TAG'")
    algo = weights.digest.split(":", 1)[0]
    if algo not in ("sha256", "sha1") or len(weights.digest.split(":", 1)[-1]) < 8:
        raise ValueError(f"digest {weights.digest!r} must be 'sha256:HEX' or 'sha1:HEX' (at least 8 hex digits)")
    _REGISTRY[weights.name] = weights
    return weights


register(
    Weights(
        name="alexnet_owt.IMAGENET1K_V1",
        url="https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
        file_name="alexnet-owt-7be5be79.pth",
        digest="sha256:7be5be79",
        size_mb=233.087,
        file_format="state_dict",
        preprocessing={
            "stored_size": 256,
            "crop": 224,
            "input_size": 224,
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
        },
        categories=_imagenet,
        metrics={"acc1": 56.522, "acc5": 79.066},
        metrics_source="torchvision AlexNet_Weights.IMAGENET1K_V1 (ImageNet-1K val, resize 256, centre crop 224)",
        licence="BSD-3-Clause (torchvision); ImageNet's terms of access apply to the data it was trained on",
    )
)
register(
    Weights(
        name="alexnet_paper.BVLC_IMAGENET1K",
        url="http://dl.caffe.berkeleyvision.org/bvlc_alexnet.caffemodel",
        file_name="bvlc_alexnet.caffemodel",
        digest="sha1:9116a64c0fbe4459d18f4bb6b56d647b63920377",
        size_mb=233.0,
        file_format="caffemodel",
        # Converted: RGB in (conv1 reversed), [0, 255] minus BVLC's per-channel means (B 104, G 117, R 123).
        preprocessing={
            "stored_size": 256,
            "crop": 227,
            "input_size": 227,
            "mean": [123 / 255, 117 / 255, 104 / 255],
            "std": None,
            "pixel_scale": 255.0,
        },
        categories=_imagenet,
        metrics={"acc1": 57.1, "acc5": 80.2},
        metrics_source="BVLC model zoo, models/bvlc_alexnet/readme.md (ILSVRC-2012 val, centre crop only)",
        licence="non-commercial use only (BVLC: ImageNet's terms of access)",
        overrides={"lrn_k": 1.0, "lrn_convention": "caffe", "lrn_across_towers": True},
    )
)


def list_weights() -> list[Weights]:
    """Every registered entry, by name."""
    return [_REGISTRY[n] for n in sorted(_REGISTRY)]


def get_weights(name: str, variant: str | None = None) -> Weights:
    """The entry called ``name``: ``variant.TAG``, or a ``TAG`` (or ``DEFAULT``: its first entry) of ``variant``.

    Raises:
        WeightsError: no such entry, naming the registered ones.
    """
    if variant is not None and "." not in name:
        own = [w for w in list_weights() if w.variant == variant]
        if name == "DEFAULT" and own:
            return own[0]
        name = f"{variant}.{name}"
    if name not in _REGISTRY:
        raise WeightsError(
            f"no weights called {name!r}; registered: {sorted(_REGISTRY)} (a file of weights loads with "
            "alexnet.load_trained(path))"
        )
    return _REGISTRY[name]


def cache_dir() -> Path:
    """torch.hub's checkpoint cache: ``$TORCH_HOME/hub/checkpoints`` (default ``~/.cache/torch``)."""
    hub = sys.modules.get("torch.hub")
    if hub is not None:  # torch is loaded: ask it, which also honours torch.hub.set_dir()
        return Path(hub.get_dir()) / "checkpoints"
    # torch.hub._get_torch_home's rule, read without importing torch (1.2 s)
    home = os.getenv("TORCH_HOME", os.path.join(os.getenv("XDG_CACHE_HOME", "~/.cache"), "torch"))
    return Path(os.path.expanduser(home)) / "hub" / "checkpoints"


def is_cached(weights: Weights) -> bool:
    return weights.cache_path().is_file()


@dataclass(frozen=True)
class CacheState:
    """What the cache holds of one entry.

    Attributes:
        size_mb: the cached file's size (MiB), None when nothing is cached.
        verified: whether its hash is the published one; None when not checked (hashing 233 MB takes ~1 s), as
            a listing does by default; a damaged file is refused by its hash anyway when it is used.
        problem: why it is not the published file, when checked and not.
    """

    size_mb: float | None
    verified: bool | None = None
    problem: str | None = None

    @property
    def cached(self) -> bool:
        return self.size_mb is not None

    def looks_cut_short(self, weights: Weights) -> bool:
        """Whether the file's size is off the published one by more than its rounding (1%): a copy cut short, a
        file of something else; `cache_state` with ``check`` tells for certain."""
        return self.size_mb is not None and abs(self.size_mb - weights.size_mb) > 0.01 * weights.size_mb


def cache_state(weights: Weights, check: bool = False) -> CacheState:
    """The cached file of ``weights``, its hash checked against the published one with ``check``."""
    path = weights.cache_path()
    try:
        if not path.is_file():
            return CacheState(None)
        size_mb = path.stat().st_size / 2**20
    except OSError:
        return CacheState(None)
    if not check:
        return CacheState(size_mb)
    try:
        verify(path, weights)
    except WeightsError as err:
        return CacheState(size_mb, False, str(err))
    except OSError as err:  # not readable
        return CacheState(size_mb, False, f"{path}: {err.strerror or err}")
    return CacheState(size_mb, True)


def _digest_of(path: Path, algo: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, algo).hexdigest()


def verify(path: Path, weights: Weights) -> None:
    """Raise `WeightsError` unless ``path`` has the published hash (a prefix, where that is all that's published)."""
    algo, expected = weights.digest.split(":", 1)
    actual = _digest_of(path, algo)
    if not actual.startswith(expected.lower()):
        raise WeightsError(
            f"{path} is not {weights.name}: its {algo.upper()} is {actual[:16]}…, expected {expected}; "
            "delete it and download again (or put the publisher's file there by hand)"
        )
