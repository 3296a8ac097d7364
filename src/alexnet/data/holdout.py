"""A validation split carved from the training split (``data.val_split``), for data sets whose only other split is
the test set: Fashion-MNIST, MNIST, CIFAR and folders with ``train/`` and ``test/`` only.

The held-out images are chosen per class in proportion to its share of the training split (stratified), by a
generator seeded with ``data.val_seed`` alone, so every run and every seed of a reproduction holds out the same
images. Selection (the best checkpoint, early stopping, the plateau schedule) then reads these images, and the test
split is evaluated once, after the last epoch.
"""

from __future__ import annotations

import torch

from ..errors import ConfigError


def holdout_count(val_split: float, n: int) -> int:
    """Images to hold out of ``n``: ``val_split`` is a fraction in (0, 1) or a count ≥ 1.

    Raises:
        ConfigError: a count that is not whole, or that leaves no training image.
    """
    if val_split < 1:
        count = round(val_split * n)
        if count >= n:
            raise ConfigError(f"data.val_split={val_split:g} holds out every one of the {n} training images")
        return count
    if val_split != int(val_split):
        raise ConfigError(f"data.val_split={val_split:g}: give a fraction in (0, 1) or a whole number of images")
    if val_split >= n:
        raise ConfigError(f"data.val_split={int(val_split)} holds out every one of the {n} training images")
    return int(val_split)


def holdout_indices(labels: torch.Tensor, val_split: float, seed: int) -> torch.Tensor:
    """Sorted indices (int64) of the images to hold out of a training split with these (N,) ``labels``.

    Each class gives its share of the count (largest remainders settle the rounding), drawn at random within
    the class by a generator seeded with ``seed``.
    """
    labels = labels.cpu()
    n = len(labels)
    k = holdout_count(val_split, n)
    classes, counts = labels.unique(return_counts=True)
    exact = counts.double() * k / n
    take = exact.floor().long()
    short = k - int(take.sum())
    if short:  # largest remainders first; ties to the lower class index (stable sort)
        order = torch.sort(exact - take, descending=True, stable=True).indices
        take[order[:short]] += 1
    generator = torch.Generator().manual_seed(seed)
    held = []
    for c, m in zip(classes.tolist(), take.tolist()):
        members = (labels == c).nonzero().flatten()
        held.append(members[torch.randperm(len(members), generator=generator)[:m]])
    return torch.cat(held).sort().values if held else torch.zeros(0, dtype=torch.int64)


def split_indices(n: int, held: torch.Tensor) -> torch.Tensor:
    """The indices of ``range(n)`` not in ``held``: the images that train."""
    keep = torch.ones(n, dtype=torch.bool)
    keep[held] = False
    return keep.nonzero().flatten()
