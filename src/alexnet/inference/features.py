"""Embeddings of images from a trained model's hidden layers: fc7 (the paper's Figure 4 codes) or pool5."""

from __future__ import annotations

import io
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from ..artifacts.trained import TrainedModel
from ..data.batch import stack_images
from ..errors import WriteError
from ..files import atomic_write

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


def _feature_batches(
    trained: TrainedModel, files: Iterable[str], layer: str, batch: int, errors: list[str]
) -> Iterator[tuple[np.ndarray, list[str]]]:
    """(rows, names) of image files' features, a batch at a time; a file that cannot be read appends its error."""
    from .predictor import Predictor

    predictor = Predictor(trained.model, trained.meta)
    pending: list[tuple[str, torch.Tensor]] = []

    def rows() -> tuple[np.ndarray, list[str]]:  # the pending images' features and names; none pending after
        out = extract_features(trained, stack_images([t for _, t in pending]), layer).numpy(), [n for n, _ in pending]
        pending.clear()
        return out

    for name in files:
        try:
            pending.append((name, predictor.stored(Path(name))))
        except Exception as err:  # InvalidImageError and friends: reported per file
            message = str(err)  # the decoders' errors already begin with the file's name
            errors.append(message if message.startswith(f"{name}: ") else f"{name}: {message}")
        if len(pending) >= batch:
            yield rows()
    if pending:
        yield rows()


def features_of_files(
    trained: TrainedModel, files: Iterable[str], layer: str = "fc7", batch: int = 64
) -> tuple[np.ndarray, list[str], list[str]]:
    """Features of image files (decoded as `predict` decodes them), the files that worked, and the errors. All in
    memory: `write_features` writes them as they come."""
    done: list[str] = []
    errors: list[str] = []
    chunks = []
    for rows, names in _feature_batches(trained, files, layer, batch, errors):
        chunks.append(rows)
        done.extend(names)
    return (np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)), done, errors


class NoFeaturesError(WriteError):
    """No image could be read: nothing was written. ``errors`` says why for each file."""

    def __init__(self, message: str, errors: list[str]) -> None:
        super().__init__(message)
        self.errors = errors


@dataclass
class FeatureFile:
    """A written features array: where, its (rows, dimensions), the files of its rows in order, and the errors."""

    path: Path
    shape: tuple[int, int]
    done: list[str]
    errors: list[str]


def write_features(
    trained: TrainedModel, files: Sequence[str], out: Path | str, layer: str = "fc7", batch: int = 64
) -> FeatureFile:
    """Features of image files into the float32 ``.npy`` ``out``, each batch written as it is computed: memory holds
    one batch whatever the number of files (an array of 1.28 M ImageNet images' fc7 is 21 GB, and gathering it whole
    before writing took twice that). Written beside ``out`` and renamed over it once complete (`atomic_write`).

    Raises:
        NoFeaturesError: no file could be read (``out`` is left as it was); WriteError: ``out`` cannot be written.
    """
    out = Path(out)
    done: list[str] = []
    errors: list[str] = []
    shape = [0, 0]
    # The header's room is kept for the most rows and widest rows there could be, then rewritten in place.
    room = len(_npy_header((len(files), 10**12)))

    def write(f: BinaryIO) -> None:
        f.write(b"\0" * room)
        for rows, names in _feature_batches(trained, files, layer, batch, errors):
            f.write(np.ascontiguousarray(rows, dtype="<f4").tobytes())
            shape[:] = [shape[0] + len(rows), rows.shape[1]]
            done.extend(names)
        if not done:
            raise NoFeaturesError(f"no image could be read; {out} not written", errors)
        f.seek(0)
        f.write(_npy_header(tuple(shape), room))

    atomic_write(out, write)
    return FeatureFile(out, (shape[0], shape[1]), done, errors)


def _npy_header(shape: tuple[int, ...], length: int | None = None) -> bytes:
    """NumPy's version 1.0 header of a C-ordered little-endian float32 array of ``shape``, spaces added before its
    closing newline to make it ``length`` bytes (the room kept for it); its length field says so."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "<f4", "fortran_order": False, "shape": shape})
    header = buffer.getvalue()
    if length is None or length == len(header):
        return header
    header = header[:-1] + b" " * (length - len(header)) + b"\n"
    return header[:8] + struct.pack("<H", length - 10) + header[10:]
