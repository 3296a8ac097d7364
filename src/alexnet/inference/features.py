"""Embeddings of images from a trained model's hidden layers: fc7 (the paper's Figure 4 codes) or pool5."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from ..artifacts.trained import TrainedModel
from ..data.batch import stack_images

LAYERS = ("fc7", "fc6", "pool5")


@torch.no_grad()
def extract_features(trained: TrainedModel, images: torch.Tensor, layer: str = "fc7", batch: int = 256) -> torch.Tensor:
    """(N, D) features of (N, C, S, S) uint8 stored images, after the model's eval preprocessing.

    ``fc7`` is the last hidden layer after its ReLU (4096-d for the ImageNet network; the paper's Figure 4 compares
    these by Euclidean distance), ``fc6`` the one before, ``pool5`` the flattened conv features.
    """
    if layer not in LAYERS:
        raise ValueError(f"unknown layer {layer!r}; choose one of {list(LAYERS)}")
    model = trained.model.eval()
    transform = trained.preprocessing.transform()
    linears = [i for i, m in enumerate(model.classifier) if isinstance(m, torch.nn.Linear)]
    stop = {"fc7": linears[-1], "fc6": linears[-2] if len(linears) > 2 else linears[-1]}.get(layer)
    out = []
    for start in range(0, len(images), batch):
        x = model.forward_features(transform.eval(images[start : start + batch]))
        if stop is not None:
            x = model.classifier[:stop](x)  # up to (not including) the next linear layer: after ReLU and dropout
        out.append(x.float())
    return torch.cat(out) if out else torch.empty(0)


def features_of_files(
    trained: TrainedModel, files: Iterable[str], layer: str = "fc7", batch: int = 64
) -> tuple[np.ndarray, list[str], list[str]]:
    """Features of image files (decoded as `predict` decodes them), the files that worked, and the errors."""
    from .predictor import Predictor

    predictor = Predictor(trained.model, trained.meta)
    done, errors, chunks, pending = [], [], [], []

    def flush() -> None:
        if pending:
            chunks.append(extract_features(trained, stack_images([t for _, t in pending]), layer).numpy())
            done.extend(name for name, _ in pending)
            pending.clear()

    for name in files:
        try:
            pending.append((name, predictor.stored(Path(name))))
        except Exception as err:  # InvalidImageError and friends: reported per file
            message = str(err)  # the decoders' errors already begin with the file's name
            errors.append(message if message.startswith(f"{name}: ") else f"{name}: {message}")
        if len(pending) >= batch:
            flush()
    flush()
    return (np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)), done, errors
