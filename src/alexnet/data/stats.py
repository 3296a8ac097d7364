"""Training-set statistics for normalisation and the paper's PCA colour noise (§4.1)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from .config import TENSOR_DATASETS, DataConfig
from .pipeline import build_data

BATCH_BYTES = 256 << 20  # a batch's stored images (uint8) at most: 256 images of 256 px take 50 MB, of 8,192 px one 201
CHUNK = 1 << 22  # pixels turned into float64 at once: (3, 2^22) is 100 MB, where a batch of 256 at 1,024 px was 6.4 GB


def dataset_stats(cfg: DataConfig, input_size: int = 224, limit_batches: int | None = None) -> dict[str, Any]:
    """Per-channel mean and std, and the eigen-decomposition of the RGB covariance, on the [0, 1] pixel scale.

    Pixels are taken from the stored images (folders: after the shorter-side resize and central crop), over the
    training split, accumulated in float64. ``eigvec`` columns are eigenvectors, ordered by decreasing eigenvalue,
    in the form ``data.pca_eigval`` / ``data.pca_eigvec`` take. ``limit_batches`` counts batches of
    ``cfg.batch_size`` images, however many a batch holds to keep large images within memory.
    """
    # Folders' stored size; the tensor data sets' images are 96 px at most, whatever resize says (it is for folders).
    side = 256 if cfg.dataset in TENSOR_DATASETS else cfg.resize or 256
    batch = max(1, min(cfg.batch_size, BATCH_BYTES // (3 * side * side)))
    limit = None if limit_batches is None else limit_batches * cfg.batch_size  # images
    data = build_data(replace(cfg, batch_size=batch), input_size, torch.device("cpu"))
    loader = data.train
    loader.shuffle, loader.drop_last = False, False  # type: ignore[attr-defined]  # every image, once
    total = torch.zeros((), dtype=torch.float64)
    s = s2 = None
    images = 0
    for x, _ in loader.batches(0):
        if limit is not None:
            x = x[: limit - images]
        c = x.shape[1]
        for part in x.permute(1, 0, 2, 3).reshape(c, -1).split(CHUNK, dim=1):  # (C, N·H·W) in uint8
            pixels = part.double() / 255
            s = pixels.sum(1) if s is None else s + pixels.sum(1)
            s2 = pixels @ pixels.T if s2 is None else s2 + pixels @ pixels.T  # (C, C) second moments
            total += pixels.shape[1]
        images += x.shape[0]
        if limit is not None and images >= limit:
            break
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
