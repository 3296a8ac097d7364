"""Where data sets live and how they are read: small ones as whole uint8 tensors, image folders as file lists.

Small data sets (MNIST, Fashion-MNIST, CIFAR-10/100, fake) fit in memory as (N, C, H, W) uint8 tensors, so every
augmentation runs on whole batches on the compute device (`alexnet.data.batch`). Image folders (ImageNet, any
``train/`` + ``val/`` tree) are decoded in worker processes (`alexnet.data.folder`).
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DataNotFoundError
from .config import DATASETS

log = logging.getLogger(__name__)

# Where Debian's dataset-fashion-mnist package installs the four original IDX files.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
_SAID_SYSTEM_COPY: set[Path] = set()  # the data roots whose missing Fashion-MNIST was said, once a process

FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


@dataclass
class TensorSplit:
    """A whole split in memory: ``images`` (N, C, H, W) uint8, ``labels`` (N,) int64."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]


def data_root(data_dir: str | None) -> Path:
    """``data_dir``, else ``$ALEXNET_DATA``, else ``./data``."""
    return Path(data_dir or os.environ.get("ALEXNET_DATA") or "data")


MAX_IDX_BYTES = 1 << 30  # MNIST's largest file holds 47 MB, EMNIST's 0.55 GB: a header declaring more is none


def _read_idx(path: Path) -> np.ndarray:
    """An MNIST-format IDX file of bytes (optionally gzipped) as a numpy array, read no further than its header
    declares (a gzip bomb costs nothing more).

    Raises:
        DataNotFoundError: not such a file, cut short (a download that stopped, a full disk) or damaged (gzip's CRC),
            saying to delete it so that it is fetched again.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    fix = "delete it to download it again, or put an intact copy there"
    try:
        with opener(path, "rb") as f:
            head = f.read(4)  # two zero bytes, 0x08 (unsigned bytes), the number of dimensions
            if len(head) < 4 or head[:3] != b"\0\0\x08" or head[3] not in (1, 3):
                raise DataNotFoundError(f"{path} is not an MNIST-format IDX file (it starts {head!r}): {fix}")
            dims = [int.from_bytes(f.read(4), "big") for _ in range(head[3])]
            count = int(np.prod(dims))
            if count > MAX_IDX_BYTES:
                raise DataNotFoundError(f"{path} declares {dims} bytes of data, more than any such file: {fix}")
            data = f.read(count + 1)  # a byte more: reads to the end, where gzip checks its CRC
    except (OSError, EOFError, zlib.error) as err:  # gzip's "ended before the end-of-stream marker", "CRC check failed"
        raise DataNotFoundError(f"{path} cannot be read ({err}): {fix}") from None
    if len(data) != count:
        held = "more than" if len(data) > count else f"{len(data):,} of the"
        raise DataNotFoundError(f"{path} holds {held} {count:,} bytes its header declares {dims}: {fix}")
    return np.frombuffer(data, dtype=np.uint8).reshape(dims)


def _find_idx(dirs: list[Path], stem: str) -> Path | None:
    for d in dirs:
        for name in (stem, stem + ".gz"):
            if (d / name).is_file():
                return d / name
    return None


def _download(name: str, root: Path, into: Path, make: Callable[[], Any]) -> Any:
    """``make()``, torchvision's data set built with ``download=True``, which first makes ``into`` and any folder
    above it. On failure those folders go again where still empty (an offline run with a mistyped --data-dir left
    the typo's tree behind), and the error is one line (torchvision's lists each mirror it tried on a line).

    Raises:
        DataNotFoundError: where to put the files by hand, and why the download failed.
    """
    made = []  # deepest first
    while not into.exists() and into != into.parent:
        made.append(into)
        into = into.parent
    try:
        return make()
    except Exception as err:  # network errors come in many types (URLError, OSError, RuntimeError)
        for folder in made:
            with contextlib.suppress(OSError):  # not empty (a partial file kept), or not ours to remove
                folder.rmdir()
        why = " ".join(str(err).split())
        raise DataNotFoundError(f"{_missing_message(name, root)} (download failed: {why})") from err


def _mnist_like(name: str, root: Path, train: bool, download: bool) -> TensorSplit:
    import torchvision

    folder = "FashionMNIST" if name == "fashion-mnist" else "MNIST"
    dirs = [root / folder / "raw", root / name, root]
    if name == "fashion-mnist":
        dirs.append(DEBIAN_FASHION_MNIST)
    prefix = "train" if train else "t10k"
    images, labels = _find_idx(dirs, f"{prefix}-images-idx3-ubyte"), _find_idx(dirs, f"{prefix}-labels-idx1-ubyte")
    if images is None or labels is None:
        if not download:
            raise DataNotFoundError(_missing_message(name, root))
        cls = torchvision.datasets.FashionMNIST if name == "fashion-mnist" else torchvision.datasets.MNIST
        ds = _download(name, root, root / folder / "raw", lambda: cls(str(root), train=train, download=True))
        return TensorSplit(ds.data.unsqueeze(1).contiguous(), ds.targets.long(), list(ds.classes))
    if images.parent == DEBIAN_FASHION_MNIST and root not in _SAID_SYSTEM_COPY:  # once, for both splits
        # said: a --data-dir that holds none (a typo?) read the system's copy without a word
        _SAID_SYSTEM_COPY.add(root)
        log.info("fashion-mnist: reading Debian's copy in %s (none under %s)", DEBIAN_FASHION_MNIST, root.resolve())
    else:
        log.debug("reading %s from %s", name, images.parent)
    x = torch.from_numpy(_read_idx(images).copy()).unsqueeze(1)  # (N, 1, 28, 28)
    y = torch.from_numpy(_read_idx(labels).astype(np.int64))
    if x.dim() != 4 or y.dim() != 1 or len(x) != len(y):
        raise DataNotFoundError(
            f"{images} holds {len(x):,} images of {tuple(x.shape[2:])} and {labels} {len(y):,} labels of "
            f"{tuple(y.shape[1:])}: not images and a label for each (files of two data sets, or one renamed)"
        )
    classes = FASHION_CLASSES if name == "fashion-mnist" else [str(i) for i in range(10)]
    return TensorSplit(x, y, list(classes))


def _cifar(name: str, root: Path, train: bool, download: bool) -> TensorSplit:
    import torchvision

    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    try:
        ds = cls(str(root), train=train, download=False)
    except RuntimeError:
        if not download:
            raise DataNotFoundError(_missing_message(name, root)) from None
        ds = _download(name, root, root, lambda: cls(str(root), train=train, download=True))
    x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # (N, 32, 32, 3) → (N, 3, 32, 32)
    return TensorSplit(x, torch.tensor(ds.targets, dtype=torch.int64), list(ds.classes))


def fake_split(
    train: bool, num_classes: int = 10, size: int = 32, channels: int = 3, n: int | None = None
) -> TensorSplit:
    """Synthetic images a network can learn: each class is a fixed smooth random pattern plus per-image noise.

    The patterns are 4×4 random colours upsampled to ``size``, so a few pixels of translation (random crops)
    keep an image recognisable.

    Deterministic (seeded by the split), so tests and benchmarks see the same data every time.
    """
    n = n or (1024 if train else 256)
    g = torch.Generator().manual_seed(0)
    coarse = torch.rand(num_classes, channels, 4, 4, generator=g) * 255
    prototypes = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    g.manual_seed(1 if train else 2)
    labels = torch.randint(0, num_classes, (n,), generator=g)
    noise = torch.randn(n, channels, size, size, generator=g) * 60
    images = (prototypes[labels] + noise).clamp(0, 255).to(torch.uint8)
    return TensorSplit(images, labels, [f"class_{i}" for i in range(num_classes)])


_IGNORED: set[str] = set()  # data directories said to be ignored (with the fake data set)


def load_tensor_split(name: str, data_dir: str | None, train: bool, download: bool = True) -> TensorSplit:
    """One split of a small data set as uint8 tensors.

    Raises:
        DataNotFoundError: the files are missing and could not be downloaded; the message says how to get them.
    """
    if name == "fake":
        if data_dir is not None and data_dir not in _IGNORED:  # said once: a dry run of a real command line is fine
            _IGNORED.add(data_dir)
            log.warning("the fake data set is generated and reads no files: %s is not read", data_dir)
        return fake_split(train)
    root = data_root(data_dir)
    if name in ("fashion-mnist", "mnist"):
        return _mnist_like(name, root, train, download)
    if name in ("cifar10", "cifar100"):
        return _cifar(name, root, train, download)
    raise ValueError(f"unknown data set {name!r}; choose one of {list(DATASETS)}")


def _missing_message(name: str, root: Path) -> str:
    how = {
        "fashion-mnist": f"run with network access to download it into {root}, or `apt-get install "
        f"dataset-fashion-mnist` (Debian/Ubuntu; installs to {DEBIAN_FASHION_MNIST}), or put the four "
        f"*-idx?-ubyte.gz files in {root / 'FashionMNIST' / 'raw'}",
        "mnist": f"run with network access to download it into {root}, or put the four *-idx?-ubyte.gz files in "
        f"{root / 'MNIST' / 'raw'}",
        "cifar10": f"run with network access, or extract cifar-10-python.tar.gz into {root} "
        f"(giving {root / 'cifar-10-batches-py'}); a folder of JPEGs works with --dataset folder",
        "cifar100": f"run with network access, or extract cifar-100-python.tar.gz into {root}",
    }[name]
    return f"{name} not found under {root.resolve()}: {how}; --data-dir or $ALEXNET_DATA choose the root"
