"""A split of either kind of data set (torchvision tensors, or an image folder) as stored images: what export's parity
check, quantize's calibration and the figures read, without building a training pipeline."""

from __future__ import annotations

from typing import Literal

import torch

from .config import TENSOR_DATASETS
from .folder import decode_split, find_splits, list_classes, scan_folder
from .sources import TensorSplit, data_root, load_tensor_split


def stored_split(
    dataset: str,
    data_dir: str | None,
    *,
    train: bool,
    size: int,
    limit: int | None = None,
    pick: Literal["first", "spread", "random"] = "first",
    seed: int = 0,
    workers: int = 2,
    max_bad_fraction: float = 0.01,
) -> TensorSplit:
    """The training (``train``) or test split as uint8 (N, C, size, size) images with labels, never downloading.

    Args:
        size: the stored side of a folder's images (a tensor data set keeps its own).
        limit: at most this many images, chosen by ``pick``: the first, an even spread over the class-sorted files
            (every class represented), or a random draw seeded by ``seed``. A folder decodes only those.

    Raises:
        DataNotFoundError: the data set is not on disk.
    """
    if dataset in TENSOR_DATASETS:
        split = load_tensor_split(dataset, data_dir, train=train, download=False)
        keep = _choose(len(split.labels), limit, pick, seed)
        if keep is None:
            return split
        return TensorSplit(split.images[keep], split.labels[keep], split.classes)
    train_dir, test_dir = find_splits(data_root(data_dir))
    classes = list_classes(train_dir)
    samples, _ = scan_folder(train_dir if train else test_dir, classes)
    keep = _choose(len(samples), limit, pick, seed)
    if keep is not None:
        samples = [samples[i] for i in keep.tolist()]
    return decode_split(samples, classes, size, workers, max_bad_fraction)


def _choose(n: int, limit: int | None, pick: str, seed: int) -> torch.Tensor | None:
    if limit is None or (limit >= n and pick != "random"):
        return None
    if pick == "first":
        return torch.arange(limit)
    if pick == "spread":
        return torch.arange(0, n, max(1, n // limit))[:limit]
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:limit]
