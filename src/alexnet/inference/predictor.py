"""`Predictor`: top-k class names for images, from weights whose metadata carries the eval preprocessing.

The same preprocessing serves PyTorch weights and exported ONNX files: decode (`alexnet.data.decode`), shorter side
to the stored size and its central square (as in training), grayscale when the model takes one channel, then the
training run's central (or ten-) crop and normalisation.
"""

from __future__ import annotations

import glob
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageOps
from torchvision.transforms.v2 import functional as TF

from ..data.batch import BatchTransform
from ..data.decode import decode_image, is_image_file, pil_to_rgb
from ..data.folder import stack_images
from ..device import autocast, pick_device, pick_precision
from ..errors import InvalidImageError

log = logging.getLogger(__name__)
ImageLike = str | Path | Image.Image | torch.Tensor


@dataclass
class Prediction:
    """Top-k labels and probabilities for one input, or the error that stopped it."""

    source: str
    topk: list[tuple[str, float]]
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        if self.error is not None:
            return {"path": self.source, "error": self.error}
        return {"path": self.source, "topk": [{"label": label, "prob": round(p, 6)} for label, p in self.topk]}


def to_stored(image: torch.Tensor, size: int, channels: int) -> torch.Tensor:
    """(3, H, W) uint8 RGB → (channels, size, size) uint8: shorter side to ``size``, central square."""
    image = TF.resize(image, [size], antialias=True)
    image = TF.center_crop(image, [size])
    if channels == 1:
        image = TF.rgb_to_grayscale(image)  # ITU-R 601-2 luma, as PIL's convert("L")
    return image


def _as_rgb_tensor(item: ImageLike) -> torch.Tensor:
    if isinstance(item, (str, Path)):
        return decode_image(Path(item))
    if isinstance(item, Image.Image):
        return TF.pil_to_tensor(pil_to_rgb(ImageOps.exif_transpose(item)))
    if isinstance(item, torch.Tensor):
        if item.ndim != 3 or item.shape[0] not in (1, 3):
            raise InvalidImageError(f"tensor of shape {tuple(item.shape)} is not a (C, H, W) image with C = 1 or 3")
        x = item if item.dtype == torch.uint8 else (item.float().clamp(0, 1) * 255).round().byte()
        return x.expand(3, -1, -1) if x.shape[0] == 1 else x
    raise InvalidImageError(f"cannot predict on a {type(item).__name__}; pass a path, PIL image or tensor")


def expand_inputs(inputs: Iterable[str]) -> list[str]:
    """Files, directories (walked recursively for images) and glob patterns, in a stable order."""
    files: list[str] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files += sorted(str(p) for p in path.rglob("*") if p.is_file() and is_image_file(p))
        elif not path.exists() and any(c in item for c in "*?["):
            files += sorted(glob.glob(item, recursive=True))
        else:
            files.append(item)  # a missing file is reported per path by predict
    return files


class Predictor:
    """Predict top-k classes with a trained model.

    Args:
        model: a PyTorch module, or an ``onnxruntime.InferenceSession``.
        classes: class names in label order.
        data: preprocessing metadata saved with the weights (``mean``, ``std``, ``crop``, sizes).
        in_channels: image channels the model takes.
        device: for PyTorch models (``auto``, ``cpu``, ``cuda``...).
        precision: ``auto``, ``fp32`` or ``bf16`` for PyTorch models.
    """

    def __init__(self, model: Any, classes: Sequence[str], data: dict[str, Any], in_channels: int = 3,
                 device: str = "cpu", precision: str = "fp32") -> None:  # fmt: skip
        self.classes, self.data, self.in_channels = list(classes), data, in_channels
        self.transform = BatchTransform.from_meta(data, in_channels)
        self.is_onnx = not isinstance(model, torch.nn.Module)
        self.device = torch.device("cpu") if self.is_onnx else pick_device(device)
        self.precision = "fp32" if self.is_onnx else pick_precision(precision, self.device)
        self.model = model if self.is_onnx else model.eval().to(self.device)

    @classmethod
    def from_path(cls, path: str | Path, device: str = "cpu", precision: str = "fp32") -> Predictor:
        """From ``.safetensors`` weights, a ``.pt`` training checkpoint, or an ``.onnx`` file we exported."""
        path = Path(path)
        if path.suffix == ".onnx":
            from .export import load_onnx

            session, meta = load_onnx(path)
            return cls(session, meta["classes"], meta["data"], meta["model"]["in_channels"])
        from .evaluation import load_trained

        trained = load_trained(path)
        return cls(trained.model, trained.classes, trained.data, trained.model.in_channels, device, precision)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        if self.is_onnx:
            name = self.model.get_inputs()[0].name
            return torch.from_numpy(self.model.run(None, {name: x.float().contiguous().numpy()})[0])
        with torch.no_grad(), autocast(self.device, self.precision):
            return self.model(x.to(self.device)).float().cpu()

    def predict_batch(
        self, images: Sequence[torch.Tensor], topk: int = 5, ten_crop: bool = False
    ) -> list[list[tuple[str, float]]]:
        """Top-k (label, probability) for already-decoded (3, H, W) uint8 RGB images."""
        size = self.data["stored_size"]
        x = stack_images([to_stored(img, size, self.in_channels) for img in images])
        b = x.shape[0]
        inputs = self.transform.ten_crop(x) if ten_crop else self.transform.eval(x)
        probs = self._logits(inputs).softmax(1)
        if ten_crop:
            probs = probs.view(10, b, -1).mean(0)
        k = min(topk, probs.shape[1])
        values, indices = probs.topk(k, dim=1)
        return [
            [(self.classes[i], float(p)) for p, i in zip(vs, ix)] for vs, ix in zip(values.tolist(), indices.tolist())
        ]

    def predict_iter(self, images: Iterable[ImageLike], topk: int = 5, batch_size: int = 32,
                     ten_crop: bool = False) -> Iterator[Prediction]:  # fmt: skip
        """Yield one `Prediction` per input, in order; an input that fails carries its error, the rest go on."""
        pending: list[tuple[str, torch.Tensor]] = []

        def flush() -> Iterator[Prediction]:
            results = self.predict_batch([t for _, t in pending], topk, ten_crop)
            for (name, _), top in zip(pending, results):
                yield Prediction(name, top)
            pending.clear()

        for i, item in enumerate(images):
            name = str(item) if isinstance(item, (str, Path)) else f"<{type(item).__name__} {i}>"
            try:
                pending.append((name, _as_rgb_tensor(item)))
            except InvalidImageError as err:
                message = str(err)
                yield Prediction(name, [], message[len(name) + 2 :] if message.startswith(name + ": ") else message)
                continue
            if len(pending) >= batch_size:
                yield from flush()
        if pending:
            yield from flush()

    def predict(self, images: ImageLike | Iterable[ImageLike], topk: int = 5, batch_size: int = 32,
                ten_crop: bool = False) -> list[Prediction]:  # fmt: skip
        """Predictions for one image or many (paths, PIL images, or (C, H, W) tensors: uint8, or float in [0, 1])."""
        if isinstance(images, (str, Path, Image.Image)) or (isinstance(images, torch.Tensor) and images.ndim == 3):
            images = [images]
        return list(self.predict_iter(images, topk, batch_size, ten_crop))
