"""Training-set statistics for normalisation and the paper's PCA colour noise (§4.1)."""

from __future__ import annotations

from typing import Any

import torch

from .config import DataConfig
from .pipeline import build_data


def dataset_stats(cfg: DataConfig, input_size: int = 224, limit_batches: int | None = None) -> dict[str, Any]:
    """Per-channel mean and std, and the eigen-decomposition of the RGB covariance, on the [0, 1] pixel scale.

    Pixels are taken from the stored images (folders: after the shorter-side resize and central crop), over the
    training split, accumulated in float64. ``eigvec`` columns are eigenvectors, ordered by decreasing eigenvalue,
    in the form ``data.pca_eigval`` / ``data.pca_eigvec`` take.
    """
    data = build_data(cfg, input_size, torch.device("cpu"))
    loader = data.train
    loader.shuffle, loader.drop_last = False, False  # type: ignore[attr-defined]  # every image, once
    total = torch.zeros((), dtype=torch.float64)
    s = s2 = None
    images = 0
    for i, (x, _) in enumerate(loader.batches(0)):
        if limit_batches is not None and i >= limit_batches:
            break
        c = x.shape[1]
        pixels = x.permute(1, 0, 2, 3).reshape(c, -1).double() / 255  # (C, N·H·W)
        s = pixels.sum(1) if s is None else s + pixels.sum(1)
        s2 = pixels @ pixels.T if s2 is None else s2 + pixels @ pixels.T  # (C, C) second moments
        total += pixels.shape[1]
        images += x.shape[0]
    if s is None or s2 is None:
        raise ValueError("the training split is empty")
    mean = s / total
    cov = s2 / total - torch.outer(mean, mean)
    eigval, eigvec = torch.linalg.eigh(cov)
    order = eigval.argsort(descending=True)
    return {
        "dataset": cfg.dataset,
        "images": images,
        "mean": [round(v, 6) for v in mean.tolist()],
        "std": [round(v, 6) for v in cov.diagonal().sqrt().tolist()],
        "pca_eigval": [round(v, 6) for v in eigval[order].tolist()],
        "pca_eigvec": [[round(v, 6) for v in row] for row in eigvec[:, order].tolist()],
    }
