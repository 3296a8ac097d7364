"""The trained model as one typed artifact: the network's description, its preprocessing, its classes and where it
came from, validated before anything is allocated. Every path that loads a model (eval, predict, export, resume
and serving) reads its metadata through `ModelMeta.from_dict` and its weights through `load_trained`.

Like torchvision's ``Weights``, the artifact carries what a user needs to feed the network (``preprocessing``) and
to read its output (``classes``); ``provenance`` says how it was made. On disk it is JSON: under the ``alexnet``
key of a safetensors header, in the ONNX / TorchScript / torch.export files we write, and beside the state in
training checkpoints.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import config_from_dict
from ..data.batch import BatchTransform
from ..errors import AlexNetError, CorruptCheckpointError, IncompatibleCheckpointError, NonFiniteWeightsError
from ..names import display_label
from .checkpoint import load_checkpoint, load_weights, read_weights_meta, weights_header

FORMAT_VERSION = 1
# A classifier wider than this is a tampered file, not a model: fc8 at 4096 × 100,000 is already 1.6 GB of fp32.
MAX_CLASSES = 100_000
MAX_SIDE = 4096  # px; the spec table's own bound on input_size


class InvalidMetadataError(CorruptCheckpointError):
    """A model's metadata is missing a field, has a wrong value, or comes from a newer format."""


def _fail(source: str, message: str) -> InvalidMetadataError:
    return InvalidMetadataError(f"{source}: invalid model metadata: {message}")


SINGLE_VIEW: dict[str, Any] = {"ten_crop": False, "flip": False, "translate": 0}


def _sound_views(recorded: Any, input_size: int) -> dict[str, Any] | None:
    """``provenance.eval_views`` when it is exactly the three known fields with sound values, else None: translated
    views shift by less than the input (px), as `alexnet.config.Config.validate` requires of a run."""
    if not isinstance(recorded, dict) or set(recorded) != set(SINGLE_VIEW):
        return None
    ten_crop, flip, translate = recorded["ten_crop"], recorded["flip"], recorded["translate"]
    if not (isinstance(ten_crop, bool) and isinstance(flip, bool)):
        return None
    if isinstance(translate, bool) or not isinstance(translate, int) or not 0 <= translate < input_size:
        return None
    return {"ten_crop": ten_crop, "flip": flip, "translate": translate}


def _int(tree: dict[str, Any], key: str, source: str, low: int = 1, high: int = MAX_SIDE, where: str = "") -> int:
    value = tree.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise _fail(source, f"{where}{key}={value!r} must be an integer in [{low}, {high}]")
    return value


def _floats(value: Any, n: int, source: str, name: str, positive: bool = False) -> tuple[float, ...]:
    ok = isinstance(value, (list, tuple)) and len(value) == n
    ok = ok and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    if ok and positive:
        ok = all(v > 0 for v in value)
    if not ok:
        kind = "finite positive" if positive else "finite"
        raise _fail(source, f"data.{name}={value!r} must be {n} {kind} number(s), one per input channel")
    return tuple(float(v) for v in value)


@dataclass(frozen=True)
class ModelDescription:
    """How to rebuild the network: a registered variant, its output and input widths, its spec overrides."""

    variant: str
    num_classes: int
    in_channels: int
    overrides: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, tree: Any, source: str) -> ModelDescription:
        from ..models import get_spec, list_models

        if not isinstance(tree, dict):
            raise _fail(source, "'model' must be an object")
        variant = tree.get("variant")
        if variant not in list_models():
            raise _fail(source, f"model.variant={variant!r} is not one of {list_models()}")
        overrides = tree.get("overrides", {})
        if not isinstance(overrides, dict):
            raise _fail(source, "model.overrides must be an object")
        try:
            get_spec(variant, **overrides)  # checks every override's name and range; builds nothing
        except ValueError as err:
            raise _fail(source, f"model.overrides: {err}") from None
        num_classes = _int(tree, "num_classes", source, 1, MAX_CLASSES, "model.")
        in_channels = _int(tree, "in_channels", source, 1, 4, "model.")
        return cls(variant, num_classes, in_channels, dict(overrides))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def build(self) -> nn.Module:
        from ..models import create_model

        return create_model(self.variant, num_classes=self.num_classes, in_channels=self.in_channels, **self.overrides)


@dataclass(frozen=True)
class Preprocessing:
    """What turns a decoded image into the network's input, as the training run did it.

    Attributes:
        stored_size: shorter side the image is resized to (then its central square is kept), px.
        crop: central crop side taken from the stored square, px (then resized to ``input_size``).
        input_size: the side the network takes, px.
        mean: per-channel mean on the [0, 1] scale, subtracted.
        std: per-channel standard deviation on the [0, 1] scale, divided by; None subtracts the mean only.
        pad: zero padding around the stored image before cropping (ten-crop of small images), px.
        pixel_scale: the scaled pixel range (1: [0, 1]; 255: the paper's raw values).
        mean_image: training subtracted a per-pixel mean image, which is not stored (evaluation recomputes it).
        dataset: the data set it was trained on, if known (evaluation's default).
    """

    stored_size: int
    crop: int
    input_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...] | None = None
    pad: int = 0
    pixel_scale: float = 1.0
    mean_image: bool = False
    dataset: str | None = None

    @classmethod
    def from_dict(cls, tree: Any, in_channels: int, source: str) -> Preprocessing:
        if not isinstance(tree, dict):
            raise _fail(source, "'data' must be an object")
        stored = _int(tree, "stored_size", source, where="data.")
        crop = _int(tree, "crop", source, where="data.")
        input_size = _int(tree, "input_size", source, where="data.")
        pad = _int(tree, "pad", source, 0, MAX_SIDE, "data.") if "pad" in tree else 0
        if crop > stored:  # the central crop of one view must fit (ten crops' corners may reach into the padding)
            raise _fail(source, f"data.crop={crop} is larger than the stored image ({stored} px)")
        mean = _floats(tree.get("mean"), in_channels, source, "mean")
        std = tree.get("std")
        std = None if std is None else _floats(std, in_channels, source, "std", positive=True)
        scale = tree.get("pixel_scale", 1.0)
        if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not (math.isfinite(scale) and scale > 0):
            raise _fail(source, f"data.pixel_scale={scale!r} must be a finite positive number")
        dataset = tree.get("dataset")
        if dataset is not None and not isinstance(dataset, str):
            raise _fail(source, f"data.dataset={dataset!r} must be a string")
        return cls(stored, crop, input_size, mean, std, pad, float(scale), bool(tree.get("mean_image")), dataset)

    def transform(self) -> BatchTransform:
        """The evaluation transform: uint8 stored images → normalised model inputs."""
        std = list(self.std) if self.std is not None else None
        return BatchTransform.for_eval(self.input_size, self.crop, list(self.mean), std, self.pad, self.pixel_scale)

    def to_dict(self) -> dict[str, Any]:
        tree = asdict(self)
        tree["mean"], tree["std"] = list(self.mean), None if self.std is None else list(self.std)
        return tree


@dataclass(frozen=True)
class ModelMeta:
    """Everything but the tensors: the model, its preprocessing, its classes, its metrics and provenance."""

    model: ModelDescription
    preprocessing: Preprocessing
    classes: tuple[str, ...]
    metrics: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)  # recipe, training config, source weights...
    format_version: int = FORMAT_VERSION

    @classmethod
    def from_dict(cls, tree: Any, source: str) -> ModelMeta:
        """Validate saved metadata, naming the first bad field.

        Raises:
            InvalidMetadataError: a missing or wrong field, or a newer format than this code reads.
        """
        if not isinstance(tree, dict):
            raise _fail(source, "not a JSON object")
        version = tree.get("format_version", 1)  # files written before the field existed are version 1
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise _fail(source, f"format_version={version!r} is not a positive integer")
        if version > FORMAT_VERSION:
            raise _fail(
                source, f"format_version {version} is newer than this alexnet reads ({FORMAT_VERSION}): upgrade alexnet"
            )
        model = ModelDescription.from_dict(tree.get("model"), source)
        classes = tree.get("classes")
        if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
            raise _fail(source, "classes must be a list of strings")
        if len(classes) != model.num_classes:
            raise _fail(source, f"{len(classes)} class names for a model with num_classes={model.num_classes}")
        if len(set(classes)) != len(classes):
            raise _fail(source, "class names repeat")
        prep = Preprocessing.from_dict(tree.get("data"), model.in_channels, source)
        metrics = tree.get("metrics") or {}
        provenance = tree.get("provenance") or {}
        if "recipe" in tree and "recipe" not in provenance:  # version-1 files kept the recipe at the top
            provenance = {**provenance, "recipe": tree["recipe"]}
        if not isinstance(metrics, dict) or not isinstance(provenance, dict):
            raise _fail(source, "metrics and provenance must be objects")
        if "eval_views" in provenance and _sound_views(provenance["eval_views"], prep.input_size) is None:
            raise _fail(
                source,
                f"provenance.eval_views={provenance['eval_views']!r:.80}: expected ten_crop and flip (true/false) "
                f"and translate (0-{prep.input_size - 1} px)",
            )
        return cls(model, prep, tuple(classes), dict(metrics), dict(provenance), FORMAT_VERSION)

    @classmethod
    def build(
        cls,
        model: Any,
        classes: Any,
        data: Any,
        metrics: Any = None,
        provenance: Any = None,
        source: str = "model metadata",
    ) -> ModelMeta:
        """The one way metadata is made, whoever makes it (training, checkpoints, published weights, Caffe): from
        the model's ``.config``, its class names, its data metadata (preprocessing), metrics and provenance,
        validated by `from_dict` as if it had been read from a file."""
        tree = {
            "format_version": FORMAT_VERSION,
            "model": model,
            "classes": classes,
            "data": data,
            "metrics": metrics or {},
            "provenance": provenance or {},
        }
        return cls.from_dict(tree, source)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "model": self.model.to_dict(),
            "classes": list(self.classes),
            "data": self.preprocessing.to_dict(),
            "metrics": self.metrics,
            "provenance": self.provenance,
        }

    def image_bytes(self, value_bytes: int, views: int = 1) -> int:
        """The least memory one image takes in inference: its stored square twice (held, then in the stacked
        batch), and for each view one layer's input and output at once: the fp32 input and conv1's output, or a
        later pair of ``value_bytes`` values (the compute dtype's size; an int8 program's, 1). What
        `alexnet.memory.check_batch` sets against the memory left: it must not overstate."""
        from ..models import get_spec

        described = self.model
        spec = get_spec(described.variant, **described.overrides)
        counts = spec.activations(self.preprocessing.input_size, described.in_channels)
        sizes = [counts[0] * 4] + [n * value_bytes for n in counts[1:]]
        stored = 2 * described.in_channels * self.preprocessing.stored_size**2
        return stored + views * max(a + b for a, b in zip(sizes, sizes[1:]))

    @property
    def labels(self) -> list[str]:
        """The class names, safe to print (see `display_label`)."""
        return [display_label(c) for c in self.classes]


@dataclass
class TrainedModel:
    """A network with its metadata: what `load_trained` returns and eval, predict, export and serving use.

    Attributes:
        model: the network in eval mode, on the CPU, fp32.
        meta: its description, preprocessing, classes, metrics, provenance.
        config: the training run's config, for a ``.pt`` checkpoint (None for release weights).
        source: the file it came from.
    """

    model: nn.Module
    meta: ModelMeta
    config: Any = None
    source: str = ""

    @property
    def classes(self) -> list[str]:
        return list(self.meta.classes)

    def check_classes(self, classes: list[str], source: str, data: str = "this data set") -> None:
        """Refuse a data set whose class list is not the model's: its labels would index the wrong names.

        Raises:
            IncompatibleCheckpointError: showing the first four of each.
        """
        if list(classes) != self.classes:
            shown = [display_label(c) for c in classes[:4]]
            raise IncompatibleCheckpointError(
                f"{source} was trained on {len(self.classes)} classes {self.meta.labels[:4]}…; {data} has "
                f"{len(classes)}: {shown}…"
            )

    @property
    def preprocessing(self) -> Preprocessing:
        return self.meta.preprocessing

    @property
    def data_dir(self) -> str | None:
        """Where training found its data: the run's config for a checkpoint, else what the weights recorded."""
        if self.config is not None and self.config.data.data_dir:
            return self.config.data.data_dir
        recorded = self.meta.provenance.get("data_dir")
        return recorded if isinstance(recorded, str) else None

    @property
    def eval_views(self) -> dict[str, Any]:
        """The test-time views its training run scored validation with (``data.ten_crop``, ``flip_tta``,
        ``translate_tta``): the run's config for a checkpoint, else what the weights recorded (checked when they
        were loaded: `ModelMeta.from_dict`), else one view."""
        if self.config is not None:
            return self.config.data.eval_views()
        return dict(self.meta.provenance.get("eval_views") or SINGLE_VIEW)


def _first_non_finite(state: dict[str, torch.Tensor]) -> str | None:
    return next((k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())), None)


def check_finite(state: dict[str, torch.Tensor], source: str) -> None:
    """Raise `NonFiniteWeightsError` naming the first tensor with a NaN or infinity."""
    key = _first_non_finite(state)
    if key is not None:
        raise NonFiniteWeightsError(
            f"{source} has non-finite weights ({key} holds NaN or inf): training diverged before it was saved"
        )


def first_non_finite(module: nn.Module) -> str | None:
    """The name of the first parameter or buffer of ``module`` holding a NaN or infinity, else None."""
    return _first_non_finite(module.state_dict())


def load_state(model: nn.Module, state: dict[str, torch.Tensor], source: str, assign: bool = False) -> None:
    """Strictly load ``state``, turning shape or key mismatches into one clear error. With ``assign`` the
    module takes the given tensors (a model built on the meta device), made contiguous float32 where floating."""
    check_fits(model, state, source)
    if assign:
        state = {k: v.float().contiguous() if v.is_floating_point() else v for k, v in state.items()}
    model.load_state_dict(state, assign=assign)


def check_fits(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Raise `IncompatibleCheckpointError` unless ``state`` has exactly ``model``'s keys and shapes (a model on the
    meta device will do: nothing is read or copied)."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [
        k
        for k in own
        if k in state and (own[k].shape != state[k].shape or own[k].is_floating_point() != state[k].is_floating_point())
    ]
    if missing or unexpected or wrong:
        detail = wrong[:3] or missing[:3] or unexpected[:3]
        raise IncompatibleCheckpointError(f"{source} does not fit this model (mismatched: {detail})")


def load_own(path: Path | str) -> TrainedModel:
    """A model from the two formats training writes: release weights (``.safetensors``) or a training checkpoint
    (``.pt``). Everything else, and the choice between formats, is `alexnet.artifacts.loader.load_trained`'s.

    The metadata is validated before the network is built, and the weights must be finite.
    """
    path = Path(path)
    source = str(path)
    if path.suffix == ".safetensors":
        meta, config = ModelMeta.from_dict(read_weights_meta(path), source), None  # before any tensor is read
        check_header(path, meta)  # names, shapes and dtypes from the header: nothing unexpected is ever read
        tensors, _ = load_weights(path)
    else:
        state = load_checkpoint(path)
        meta, tensors = meta_from_checkpoint(state, source), state["model"]
        try:
            config = config_from_dict(state["config"])
        except (AlexNetError, TypeError, AttributeError) as err:
            raise _fail(source, f"config: {err}") from None
    if not isinstance(tensors, dict) or not all(isinstance(v, torch.Tensor) for v in tensors.values()):
        raise CorruptCheckpointError(f"{source}: the model state is not a dict of tensors")
    check_finite(tensors, source)
    with torch.device("meta"):  # no random initialisation to overwrite: the weights are assigned, not copied
        model = meta.model.build()
    load_state(model, tensors, source, assign=True)
    return TrainedModel(model.eval(), meta, config, source)


_FLOAT_DTYPES = ("F32", "F16", "BF16", "F64")


def check_header(path: Path, meta: ModelMeta) -> None:
    """Refuse a safetensors file whose tensors are not exactly the model's (names, shapes, floating dtypes where
    the model has floating tensors) from its header alone, before any tensor data is read.

    Raises:
        IncompatibleCheckpointError: naming the first difference.
    """
    header = weights_header(path)
    with torch.device("meta"):
        own = meta.model.build().state_dict()
    extra, missing = sorted(set(header) - set(own)), sorted(set(own) - set(header))
    if extra or missing:
        detail = f"unexpected {extra[:3]}" if extra else f"missing {missing[:3]}"
        raise IncompatibleCheckpointError(f"{path} does not fit its model ({detail})")
    for key, tensor in own.items():
        shape, dtype = header[key]
        if shape != tuple(tensor.shape):
            raise IncompatibleCheckpointError(f"{path}: {key} has shape {list(shape)}, the model {list(tensor.shape)}")
        if tensor.is_floating_point() != (dtype in _FLOAT_DTYPES):
            raise IncompatibleCheckpointError(f"{path}: {key} is {dtype}, the model's is {tensor.dtype}")


def meta_from_checkpoint(state: dict[str, Any], source: str) -> ModelMeta:
    """The artifact metadata a training checkpoint carries (its model config, classes and data metadata)."""
    history = state.get("history") or [{}]
    config = state.get("config") if isinstance(state.get("config"), dict) else {}
    metrics = history[-1] if isinstance(history, list) and isinstance(history[-1], dict) else {}
    provenance = {"recipe": config.get("recipe", "")}
    return ModelMeta.build(
        state.get("model_config"), state.get("classes"), state.get("data_meta"), metrics, provenance, source
    )
