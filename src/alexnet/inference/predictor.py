"""`Predictor`: top-k class names for images, from a trained model whose metadata carries the eval preprocessing.

The same preprocessing serves PyTorch weights and exported ONNX files: decode (`alexnet.data.decode`), shorter side
to the stored size and its central square (as in training), grayscale when the model takes one channel, then the
training run's central (or ten-) crop and normalisation. Each input is brought to the stored size as soon as it is
decoded, so a batch waiting to fill holds small tensors only: memory is bounded whatever the files' sizes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from .. import native
from ..artifacts.loader import load_trained, model_file, say_model_file
from ..artifacts.program import is_int8
from ..artifacts.trained import ModelMeta, TrainedModel
from ..data.batch import stack_images
from ..data.decode import decode_stored, is_url, pil_to_rgb, to_stored
from ..device import autocast, compute_dtype, pick_device, pick_precision, tune_cpu_allocator
from ..errors import AlexNetError, ConfigError, InvalidImageError, NonFiniteOutputError
from ..memory import check_batch, check_need
from ..models import fused_kernels, matmul_weights_to

log = logging.getLogger(__name__)
ImageLike = str | Path | bytes | Image.Image | torch.Tensor | np.ndarray
MAX_FILE_MB = 64.0  # default per-file cap: a 16-megapixel PNG is ~20-45 MB


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


class Predictor:
    """Predict top-k classes with a trained model.

    Args:
        model: a PyTorch module, or an ``onnxruntime.InferenceSession``. The predictor takes it over: moved to
            ``device`` in eval mode and, in bf16 or fp16, with its convolution and fc weights in that dtype.
        meta: the model's validated metadata (classes and preprocessing).
        device: for PyTorch models (``auto``, ``cpu``, ``cuda``...).
        precision: ``auto``, ``fp32`` or ``bf16`` for PyTorch models.
        max_file_mb: files larger than this are refused before they are read.
        compile: compile the PyTorch model ahead of time (`CompiledModel`): seconds once, then half the batch-1
            latency on the CPU. Programs (int8, ONNX) are compiled already and run as they are.
    """

    def __init__(
        self,
        model: Any,
        meta: ModelMeta,
        device: str = "cpu",
        precision: str = "fp32",
        max_file_mb: float = MAX_FILE_MB,
        compile: bool = False,
    ) -> None:
        self.meta = meta
        self.classes = meta.labels  # display-safe names: no escape sequence of a class name reaches a terminal
        self.in_channels = meta.model.in_channels
        self.stored_size = meta.preprocessing.stored_size
        self.transform = meta.preprocessing.transform()
        self.max_bytes = int(max_file_mb * 2**20)
        self.is_onnx = not isinstance(model, torch.nn.Module)
        fixed = self.is_onnx or bool(meta.provenance.get("quantization"))  # runs as it is: CPU, no autocast
        self.device = torch.device("cpu") if fixed else pick_device(device)
        self.precision = "fp32" if fixed else pick_precision(precision, self.device)
        self.model = model if self.is_onnx else model.eval().to(self.device)
        eager = not (fixed or compile)  # a module run as it is, not a program
        if eager:
            # Channels last, the layout oneDNN's and cuDNN's convolutions prefer (and the fused CPU kernels take), as
            # training and evaluation run: alexnet_owt's batch of 64 in bf16 on 2 cores of an AMD EPYC (Zen 4) took
            # 316 ms in NCHW, 216 so.
            self.model = self.model.to(memory_format=torch.channels_last)
        if eager and self.precision != "fp32":
            if self.device.type == "cpu":
                self._check_cast()
            # Cast once, not by autocast on every call (bit for bit the same): there, alexnet_owt's batch-1 call in
            # bf16 took 26.0 ms with fp32 weights, 18.4 in fp32.
            matmul_weights_to(self.model, compute_dtype(self.precision))
        if self.device.type == "cpu":
            tune_cpu_allocator()  # as training does: each batch's activations otherwise fault their pages in anew
            if eager:  # the fused kernels its first batch asks for one by one, side by side
                native.prepare(fused_kernels(self.model, training=False, bf16=self.precision == "bf16"))
        self.compiled = compile and not fixed
        if self.compiled:
            from .compiled import CompiledModel

            size = meta.preprocessing.input_size
            self.model = CompiledModel(self.model, self.in_channels, size, compute_dtype(self.precision), self.device)

    def _check_cast(self) -> None:
        """Refuse a cast of the conv and fc weights that cannot fit in the memory left: it makes a copy of each in the
        compute dtype, and is where an ensemble's memory is first taken (a safetensors file's weights are mapped from
        the file until then): twenty `alexnet_owt` members in bf16 were killed in a 2 GB cgroup without a word."""
        kinds = (torch.nn.Conv2d, torch.nn.Linear)
        values = sum(p.numel() for m in self.model.modules() if isinstance(m, kinds) for p in m.parameters())
        members = len(getattr(self.model, "members", [self.model]))
        whose = f"the weights of {members} models" if members > 1 else "the model's weights"
        advice = "average fewer models, or run them in fp32" if members > 1 else "run it in fp32"
        need = values * compute_dtype(self.precision).itemsize
        check_need("prediction", f"{whose} in {self.precision} need", need, advice + " (--precision fp32)")

    @classmethod
    def from_path(
        cls,
        path: str | Path | Sequence[str | Path],
        device: str = "cpu",
        precision: str = "fp32",
        max_file_mb: float = MAX_FILE_MB,
        compile: bool = False,
    ) -> Predictor:
        """From ``.safetensors`` weights, a ``.pt`` training checkpoint, a ``.pt2`` program, an ``.onnx`` file we
        exported, or a run directory (its model: `alexnet.artifacts.loader.model_file`). Several (not ONNX): one
        classifier, the softmax averaged over them (`Ensemble`, the paper's five CNNs); they must agree on classes
        and preprocessing (`check_members`)."""
        given = [path] if isinstance(path, (str, Path)) else list(path)
        paths = [model_file(p) for p in given]  # a run directory as the model in it
        if len(paths) != 1:
            predictor = cls._ensemble(paths, device, precision, max_file_mb, compile)
        elif paths[0].suffix == ".onnx":
            from .export import load_onnx

            session, meta = load_onnx(paths[0])
            predictor = cls(session, meta, max_file_mb=max_file_mb)
        else:
            predictor = cls.from_trained([load_trained(paths[0])], paths, device, precision, max_file_mb, compile)
        for p, taken in zip(given, paths):  # said once the models are loaded and checked
            say_model_file(p, taken)
        return predictor

    @classmethod
    def _ensemble(cls, paths: list[Path], device: str, precision: str, max_file_mb: float, compile: bool) -> Predictor:
        onnx = [p for p in paths if p.suffix == ".onnx"]
        if onnx:
            raise ConfigError(f"{onnx[0]}: an ensemble averages PyTorch models and programs, not ONNX files")
        members = [load_trained(p) for p in paths]
        return cls.from_trained(members, paths, device, precision, max_file_mb, compile)

    @classmethod
    def from_trained(
        cls,
        members: Sequence[TrainedModel],
        paths: Sequence[str | Path],
        device: str = "cpu",
        precision: str = "fp32",
        max_file_mb: float = MAX_FILE_MB,
        compile: bool = False,
    ) -> Predictor:
        """From loaded models (``paths`` name them in errors): one, or several as one classifier, the softmax averaged
        (`Ensemble`); several must agree on classes and preprocessing (`check_members`).

        Raises:
            ConfigError: no model.
            IncompatibleCheckpointError: two members differ in classes or preprocessing.
        """
        from .ensemble import Ensemble, check_members

        if not members:
            raise ConfigError("no model to predict with")
        if len(members) == 1:
            only = members[0]
            return cls(only.model, only.meta, device, precision, max_file_mb, compile)
        check_members(paths, members, held_out=False)
        # A program among them (int8) runs as it is, on the CPU: so then do the others, in fp32, uncompiled.
        fixed = next((m for m in members if is_int8(m)), None)
        meta = (fixed or members[0]).meta
        model = Ensemble([m.model for m in members])
        return cls(model, meta, device, precision, max_file_mb, compile and fixed is None)

    def check_batch(
        self,
        count: int,
        ten_crop: bool = False,
        what: str = "prediction",
        fixed: int = 0,
        fixed_what: str = "",
        advice: str = "use a smaller batch size",
    ) -> None:
        """Refuse a batch of ``count`` images that cannot fit in the memory left (`alexnet.memory`), with ``fixed``
        bytes besides (``fixed_what``, the message's ``advice``: `alexnet.memory.check_batch`): on the CPU the
        out-of-memory killer would end the process without a word. A GPU's allocator says so itself.

        Raises:
            MemoryBudgetError: naming what the batch needs and what is available.
        """
        if self.device.type != "cpu":
            return
        quantized = bool(self.meta.provenance.get("quantization"))  # an int8 program's values: a byte
        value = 1 if quantized else compute_dtype(self.precision).itemsize
        check_batch(what, count, self.meta.image_bytes(value, 10 if ten_crop else 1), None, fixed, fixed_what, advice)

    def _logits(self, x: torch.Tensor, check_finite: bool = True) -> torch.Tensor:
        if self.is_onnx:
            from .export import run_onnx

            logits = run_onnx(self.model, x)
        elif self.compiled:  # computes in its own dtype: no autocast
            logits = self.model(x.to(self.device)).float().cpu()
        else:
            x = x.to(self.device)
            x = x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x
            with torch.no_grad(), autocast(self.device, self.precision):
                logits = self.model(x).float().cpu()
        if logits.shape != (len(x), len(self.classes)):  # a program or graph of other shapes than its metadata's
            raise AlexNetError(
                f"the model gave logits of shape {tuple(logits.shape)} for a batch of {len(x)}, where its metadata "
                f"says {len(self.classes)} classes"
            )
        if check_finite and not bool(torch.isfinite(logits).all()):  # a diverged model: never print "nan%"
            raise NonFiniteOutputError(
                "the model produces non-finite outputs (NaN or infinity) although its weights are finite: training "
                "diverged; use an earlier checkpoint"
            )
        return logits

    def probabilities(self, inputs: torch.Tensor, check_finite: bool = True) -> torch.Tensor:
        """(B, C, H, W) model inputs (already transformed) → (B, num_classes) softmax probabilities, fp32.

        Raises:
            NonFiniteOutputError: an output is not finite, unless ``check_finite`` is False (the service, which
                batches several clients' inputs, judges each one's rows itself).
        """
        return self._logits(inputs, check_finite).softmax(1)

    def stored(self, item: ImageLike, name: str = "<bytes>") -> torch.Tensor:
        """One input decoded and brought to the stored (C, S, S) uint8 square; ``name`` names a file's bytes in errors.

        Raises:
            InvalidImageError: not an image, refused (size, bomb, not a regular file), or a URL.
        """
        c, s = self.in_channels, self.stored_size
        if isinstance(item, (str, Path)):
            if is_url(str(item)):
                raise InvalidImageError(f"{item}: URLs are not read; download the file and pass its path")
            return decode_stored(Path(item), s, c, self.max_bytes)
        if isinstance(item, Image.Image):
            from torchvision.transforms.v2 import functional as TF

            return to_stored(TF.pil_to_tensor(pil_to_rgb(ImageOps.exif_transpose(item))), s, c)
        if isinstance(item, (bytes, bytearray, memoryview)):  # a file's bytes, as the service receives them
            return decode_stored(bytes(item), s, c, self.max_bytes, name)
        if isinstance(item, np.ndarray):  # (H, W), (H, W, 1) or (H, W, 3) RGB, as np.asarray(pil_image) gives
            if item.ndim not in (2, 3) or (item.ndim == 3 and item.shape[2] not in (1, 3)):
                raise InvalidImageError(f"array of shape {item.shape} is not an (H, W) or (H, W, C) image, C = 1 or 3")
            if not (item.dtype == np.uint8 or np.issubdtype(item.dtype, np.floating)):
                raise InvalidImageError(f"array of {item.dtype}: give uint8, or floats in [0, 1]")
            array = item if item.ndim == 3 else item[:, :, None]
            item = torch.from_numpy(np.array(array)).permute(2, 0, 1)  # a copy: np.asarray(pil) is read-only
        if isinstance(item, torch.Tensor):
            if item.ndim != 3 or item.shape[0] not in (1, 3):
                raise InvalidImageError(f"tensor of shape {tuple(item.shape)} is not a (C, H, W) image with C = 1 or 3")
            if item.shape[1] == 0 or item.shape[2] == 0:
                raise InvalidImageError(f"image of shape {tuple(item.shape)} has no pixels")
            if item.dtype != torch.uint8 and not item.is_floating_point():
                raise InvalidImageError(f"image of {item.dtype}: give uint8, or floats in [0, 1]")
            if item.is_floating_point() and not torch.isfinite(item).all():
                raise InvalidImageError("image with NaN or infinite values: give floats in [0, 1]")
            x = item if item.dtype == torch.uint8 else (item.float().clamp(0, 1) * 255).round().byte()
            return to_stored(x.expand(3, -1, -1) if x.shape[0] == 1 else x, s, c)
        raise InvalidImageError(
            f"cannot predict on an object of type {type(item).__name__}; pass a path, a file's bytes, a PIL image, a "
            "tensor or an array"
        )

    def predict_stored(self, x: torch.Tensor, topk: int = 5, ten_crop: bool = False) -> list[list[tuple[str, float]]]:
        """Top-k (label, probability) for a (B, C, S, S) uint8 batch of stored images."""
        b = x.shape[0]
        inputs = self.transform.ten_crop(x) if ten_crop else self.transform.eval(x)
        probs = self.probabilities(inputs)
        if ten_crop:
            probs = probs.view(10, b, -1).mean(0)  # crop-major rows: see BatchTransform.ten_crop
        k = min(topk, probs.shape[1])
        values, indices = probs.topk(k, dim=1)
        return [
            [(self.classes[i], float(p)) for p, i in zip(vs, ix)] for vs, ix in zip(values.tolist(), indices.tolist())
        ]

    def predict_iter(
        self, images: Iterable[ImageLike], topk: int = 5, batch_size: int = 32, ten_crop: bool = False
    ) -> Iterator[Prediction]:
        """Yield one `Prediction` per input, in input order; an input that fails carries its error, the rest go on.

        Raises:
            MemoryBudgetError: on the CPU, a batch (``batch_size``, or fewer inputs) that cannot fit in the memory
                left, before any input is read.
        """
        if topk < 1 or batch_size < 1:
            raise AlexNetError(f"topk ({topk}) and batch size ({batch_size}) must be at least 1")
        self.check_batch(min(batch_size, len(images)) if isinstance(images, Sized) else batch_size, ten_crop)
        pending: list[tuple[str, torch.Tensor | None, str | None]] = []  # in input order, errors included

        def flush() -> Iterator[Prediction]:
            good = [t for _, t, _ in pending if t is not None]
            results = iter(self.predict_stored(stack_images(good), topk, ten_crop) if good else [])
            for name, tensor, error in pending:
                yield Prediction(name, [], error) if tensor is None else Prediction(name, next(results))
            pending.clear()

        waiting = 0
        for i, item in enumerate(images):
            name = str(item) if isinstance(item, (str, Path)) else f"<{type(item).__name__} {i}>"
            try:
                pending.append((name, self.stored(item, name), None))
                waiting += 1
            except InvalidImageError as err:
                message = str(err)
                pending.append((name, None, message[len(name) + 2 :] if message.startswith(name + ": ") else message))
            if waiting >= batch_size:
                yield from flush()
                waiting = 0
        if pending:
            yield from flush()

    def predict(
        self, images: ImageLike | Iterable[ImageLike], topk: int = 5, batch_size: int = 32, ten_crop: bool = False
    ) -> list[Prediction]:
        """Predictions for one image or many: paths, files' bytes, PIL images, (C, H, W) tensors or (H, W[, C]) RGB
        arrays (uint8, or floats in [0, 1])."""
        one = isinstance(images, (str, Path, bytes, bytearray, memoryview, Image.Image)) or (
            isinstance(images, (torch.Tensor, np.ndarray)) and images.ndim == 3
        )
        if one:
            images = [images]
        return list(self.predict_iter(images, topk, batch_size, ten_crop))
