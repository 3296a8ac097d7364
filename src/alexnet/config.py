"""Typed run configuration: defaults here, recipes in TOML files, overrides from the command line.

A recipe holds only what differs from these defaults; `load_config` resolves it into one `Config`, which is
saved with every run and every checkpoint as a plain dict (no pickled objects).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import UnionType
from typing import Any, Union, get_args, get_origin, get_type_hints

from .data.config import DATASETS, DataConfig
from .errors import AlexNetError, ConfigError
from .names import PRECISIONS, did_you_mean
from .version import __version__

log = logging.getLogger(__name__)


NORMALIZATIONS = ("meanstd", "mean")
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("plateau", "step", "cosine", "onecycle", "constant")
PARALLEL_MODES = ("data", "towers", "hybrid")
LOGGERS = ("csv", "tensorboard")
INF = float("inf")
# Every choice field and numeric range, checked in one place (`validate`). (low, high, low inclusive); None is
# allowed where the field's type allows it.
CHOICES: dict[str, tuple[str | None, ...]] = {
    "data.normalize": NORMALIZATIONS,
    "data.auto_augment": (None, "randaugment", "trivialaugment"),
    "data.pad_mode": ("constant", "reflect"),
    "optim.name": OPTIMIZERS,
    "optim.schedule": SCHEDULES,
    "train.precision": PRECISIONS,
    "train.parallel": PARALLEL_MODES,
    "train.monitor": ("val_acc1", "val_loss"),
}
RANGES: dict[str, tuple[float, float, bool]] = {
    "data.batch_size": (1, INF, True),
    "data.eval_batch_size": (1, INF, True),
    "data.workers": (0, 256, True),
    "data.resize": (1, 8192, True),
    "data.crop": (1, 8192, True),
    "data.pad": (0, 1024, True),
    "data.translate_tta": (0, 64, True),
    "data.pca_std": (0, INF, True),
    "data.pixel_scale": (0, INF, False),
    "data.max_bad_fraction": (0, 1, True),
    "data.in_memory_gb": (0, INF, True),
    "data.val_split": (0, INF, True),
    "data.random_erasing": (0, 1, True),
    "data.cutout": (0, 8192, True),
    "data.mixup_alpha": (0, INF, True),
    "data.cutmix_alpha": (0, INF, True),
    "optim.lr": (0, INF, False),
    "optim.momentum": (0, 1, True),
    "optim.weight_decay": (0, INF, True),
    "optim.plateau_patience": (0, INF, True),
    "optim.max_drops": (0, INF, True),
    "optim.step_size": (1, INF, True),
    "optim.gamma": (0, 1, False),
    "optim.warmup_epochs": (0, INF, True),
    "optim.label_smoothing": (0, 1, True),
    "optim.clip_grad_norm": (0, INF, False),
    "optim.lr_reference_batch": (1, INF, True),
    "optim.pretrained_lr_scale": (0, INF, True),
    "train.accumulate": (1, 4096, True),
    "train.epochs": (1, INF, True),
    "train.limit_train_batches": (1, INF, True),
    "train.limit_val_batches": (1, INF, True),
    "train.checkpoint_every": (1, INF, True),
    "train.val_every": (1, INF, True),
    "train.stop_at_train_acc1": (0, 100, True),
    "train.early_stop_patience": (1, INF, True),
    "train.keep_best": (1, 1000, True),
    "train.ema_decay": (0, 1, False),
    "train.seed": (0, 2**32 - 1, True),  # NumPy's seed range (Python's and torch's are wider)
    "data.val_seed": (0, 2**32 - 1, True),
}


@dataclass
class ModelConfig:
    name: str = "alexnet_small"
    overrides: dict[str, Any] = field(default_factory=dict)  # spec fields, see alexnet.models.specs
    channels_last: bool = True  # NHWC: the layout oneDNN and cuDNN convolutions prefer
    weights: str | None = None  # start from these weights: a registry name (alexnet weights) or a file
    freeze: str | int | None = None  # "features" (every conv) or N (the first N weight layers): not trained
    # airbench's patch-whitening start for conv1, from the training images' patch covariance (with freeze=1: kept)
    whiten_conv1: bool = False


@dataclass
class OptimConfig:
    name: str = "sgd"  # sgd (the paper's update rule), adamw
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    bias_decay: bool = True  # paper: unspecified (decay everything); Caffe and cuda-convnet2 exempt biases
    nesterov: bool = False
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    schedule: str = "plateau"  # plateau, step, cosine, onecycle, constant
    plateau_patience: int = 1  # epochs without val improvement before ÷10
    max_drops: int = 3  # the paper reduced the rate three times
    step_size: int = 30  # epochs, schedule=step
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    clip_grad_norm: float | None = None
    # Linear scaling rule (Goyal et al. 2017): lr × global batch / this batch. The paper's 0.01 was for 128.
    lr_reference_batch: int | None = None
    pretrained_lr_scale: float = 1.0  # with model.weights: lr × this for the pretrained layers (new ones: × 1)


@dataclass
class TrainConfig:
    epochs: int = 10
    seed: int = 0
    device: str = "auto"  # auto, cpu, cuda, cuda:N, mps
    precision: str = "auto"  # auto (bf16 where fast), fp32, bf16, fp16
    compile: bool = False
    tune_allocator: bool = True  # CPU: keep large freed blocks in the heap (see alexnet.device.tune_cpu_allocator)
    bf16_copies: bool = True  # CPU bf16 SGD: train on bf16 copies of the weights, no per-step casts (same results)
    out: str | None = None  # run directory; default runs/<time>-<model>-<dataset>
    resume: str | None = None  # a checkpoint path, or "auto" (the run directory's last.pt)
    accumulate: int = 1  # batches per optimizer step (gradient accumulation; no all-reduce on the inner ones)
    sync_bn: bool | None = None  # batch statistics over every process's images; None: on when >1 process and BN
    parallel: str = "data"  # under torchrun: data (DDP), towers (the paper's two-GPU split), hybrid (2014)
    allow_changes: bool = False  # resume even if batch size, learning rate, seed... differ from the checkpoint's
    limit_train_batches: int | None = None
    limit_val_batches: int | None = None
    progress: bool = True
    val_every: int = 1  # validate every N epochs (and always after the last); plateau needs every epoch
    checkpoint_every: int | None = None  # also save last.pt every N steps within an epoch
    keep_every_epoch: bool = False  # also keep each epoch's state as epoch-N.pt (resumable, like last.pt)
    stop_at_train_acc1: float | None = None  # stop after the epoch whose training accuracy (%) reaches this
    # Lightning's EarlyStopping: stop after this many validations in a row without a better `monitor`; None: off
    early_stop_patience: int | None = None
    # csv: metrics.csv (always written: resume and reports read it); tensorboard: event files in <out>/tensorboard
    loggers: list[str] = field(default_factory=lambda: ["csv"])
    # best.pt/best.safetensors follow monitor (a validation figure: never the test split); keep_best > 1 also keeps
    # the k best epochs' full states as best-epochN.pt
    monitor: str = "val_acc1"
    keep_best: int = 1
    # An exponential moving average of the weights (timm's ModelEmaV3): validated beside them, saved as ema.safetensors
    ema_decay: float | None = None  # e.g. 0.999; None: off
    ema_warmup: bool = False  # decay grows as 1 - (1 + step)^(-2/3), capped at ema_decay


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    recipe: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> Config:
        """Check every choice field and numeric range, and the model and data set names.

        Raises:
            ConfigError: naming the field, its value and what is valid.
        """
        from .models import get_spec

        self._check_types()
        for dotted, choices in {**CHOICES, "data.dataset": tuple(DATASETS)}.items():
            value = self._get(dotted)
            if value not in choices:
                hint = did_you_mean(value, choices)
                raise ConfigError(f"{dotted}={value!r} is not valid; {hint}choose one of {list(choices)}")
        for dotted, (low, high, inclusive) in RANGES.items():
            value = self._get(dotted)
            if value is None:
                continue
            above = value >= low if inclusive else value > low
            if not (above and value <= high and math.isfinite(value)):  # no NaN, and no infinity (lr=inf)
                bracket = "[" if inclusive else "("
                close = ")" if high == INF else "]"
                raise ConfigError(
                    f"{dotted}={value!r} is out of range; expected a finite value in "
                    f"{bracket}{_number(low)}, {_number(high)}{close}"
                )
        for name in ("mean", "std"):
            values = getattr(self.data, name)
            if values is not None and not all(math.isfinite(v) and (name == "mean" or v > 0) for v in values):
                rule = "finite numbers" if name == "mean" else "finite numbers above 0 (it divides)"
                raise ConfigError(f"data.{name}={values!r}: give {rule}")
        if self.train.val_every > 1 and self.optim.schedule == "plateau":
            raise ConfigError('optim.schedule="plateau" needs the validation error of every epoch: train.val_every=1')
        if self.data.ten_crop and self.data.flip_tta:
            raise ConfigError("data.flip_tta and data.ten_crop are exclusive: ten crops already include the mirrors")
        if self.data.ten_crop and self.data.translate_tta:
            raise ConfigError("data.translate_tta and data.ten_crop are exclusive: ten crops are translations already")
        if self.model.whiten_conv1 and self.model.weights:
            raise ConfigError("model.whiten_conv1 starts conv1 from the data: not with pretrained model.weights")
        if self.data.alternate_flips and not self.data.flip:
            raise ConfigError("data.alternate_flips alternates the mirror each epoch: it needs data.flip=true")
        if self.data.alternate_flips and self.data.mean_image:
            raise ConfigError("data.alternate_flips mirrors images before the mean image is cropped: use one of them")
        eigval, eigvec = self.data.pca_eigval, self.data.pca_eigvec
        numbers = (int, float)
        if eigval is not None and not (len(eigval) == 3 and all(isinstance(v, numbers) for v in eigval)):
            raise ConfigError(f"data.pca_eigval={eigval!r} must be 3 numbers (one per RGB channel)")
        if eigvec is not None and not (
            len(eigvec) == 3
            and all(isinstance(r, list) and len(r) == 3 for r in eigvec)
            and all(isinstance(v, numbers) for r in eigvec for v in r)
        ):
            raise ConfigError(f"data.pca_eigvec={eigvec!r} must be a 3×3 matrix (eigenvectors as columns, RGB)")
        unknown = sorted(set(self.train.loggers) - set(LOGGERS))
        if unknown:
            hint = did_you_mean(unknown[0], LOGGERS)
            raise ConfigError(
                f"train.loggers={self.train.loggers!r}: unknown {unknown}; {hint}choose from {list(LOGGERS)}"
            )
        betas = self.optim.betas
        if len(betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas):
            raise ConfigError(f"optim.betas={betas!r} must be two numbers in [0, 1)")
        try:
            spec = get_spec(self.model.name, **self.model.overrides)
        except ValueError as err:  # an unknown model name, or an override out of range
            raise ConfigError(str(err)) from None
        if self.data.translate_tta >= spec.input_size:  # checked now, not after the first epoch's training
            raise ConfigError(
                f"data.translate_tta={self.data.translate_tta} px must be less than the model's input, "
                f"{spec.input_size} px"
            )
        return self

    def _check_types(self) -> None:
        """Every field of its declared type, as `load_config` makes them: a `Config` built or changed in Python
        (``cfg.data.batch_size = "256"``) is told here, before a run begins, not by a traceback minutes into it."""
        if not isinstance(self.recipe, str):
            raise ConfigError(f"recipe={self.recipe!r} has the wrong type; expected str")
        for section in ("model", "data", "optim", "train"):
            values, kind = getattr(self, section), get_type_hints(type(self))[section]
            if not isinstance(values, kind):
                raise ConfigError(f"{section} is a {type(values).__name__}; expected a {kind.__name__}")
            for key, hint in get_type_hints(kind).items():
                setattr(values, key, _coerce(f"{section}.{key}", getattr(values, key), hint))

    def _get(self, dotted: str) -> Any:
        section, key = dotted.split(".")
        return getattr(getattr(self, section), key)


DEFAULT_RECIPE = "fashion-mnist"
# The recipe a data set trains with when none is named (`alexnet train --dataset mnist`): the fashion-mnist recipe
# would mirror MNIST's digits and cut CIFAR's and ImageNet's images to 28 px. CIFAR-100 takes CIFAR-10's (the same
# 32 px images and augmentation; its last layer comes from the data's 100 classes), not tuned for it.
DATASET_RECIPES = {"mnist": "mnist", "cifar10": "cifar10", "cifar100": "cifar10", "imagenet": "paper-imagenet"}


def default_recipe(dataset: str | None) -> str:
    """The recipe for ``dataset`` when no recipe is named: its own where it has one, else `DEFAULT_RECIPE`."""
    return DATASET_RECIPES.get(dataset or "", DEFAULT_RECIPE)


def list_recipes() -> list[str]:
    """Names of the recipes shipped with the package."""
    return sorted(p.name[:-5] for p in resources.files("alexnet.recipes").iterdir() if p.name.endswith(".toml"))


def _read_recipe(name_or_path: str) -> dict[str, Any]:
    from .files import MB, read_json_input, read_text_input

    path = Path(name_or_path)
    if path.suffix in (".toml", ".json") and path.exists():
        if path.suffix == ".json":
            tree = read_json_input(path, MB, "recipe")
        else:
            try:
                tree = tomllib.loads(read_text_input(path, MB, "recipe"))
            except (tomllib.TOMLDecodeError, RecursionError) as err:
                raise AlexNetError(f"recipe {path} is not valid TOML ({err})") from None
        if not isinstance(tree, dict):
            raise AlexNetError(f"recipe {path} must be a table of sections (model, data, optim, train)")
        return tree
    builtin = resources.files("alexnet.recipes") / f"{name_or_path}.toml"
    if not builtin.is_file():
        hint = did_you_mean(name_or_path, list_recipes())
        raise AlexNetError(f"unknown recipe {name_or_path!r}; {hint}recipes: {list_recipes()}, or a TOML file's path")
    return tomllib.loads(builtin.read_text())


def _parse_value(text: str) -> Any:
    """TOML literal if it parses (1e-3, true, [1, 2], "s"), else the bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _coerce(where: str, value: Any, hint: Any) -> Any:
    """``value`` as the field's type ``hint`` wants it (an int where a float goes becomes a float), each item of a
    list checked too (``data.mean=["a", 1, 2]``, ``data.std=[true, 1, 1]``: a bool is not a number here).

    Raises:
        ConfigError: naming the field, its value and the type expected.
    """
    converted = _as_type(value, hint)
    if converted is _WRONG:
        # "bool", not "<class 'bool'>"; "dict[str, Any]", not "dict[str, typing.Any]"
        expected = hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")
        raise ConfigError(f"{where}={value!r} has the wrong type; expected {expected}")
    return converted


_WRONG = object()


def _as_type(value: Any, hint: Any) -> Any:
    options = get_args(hint) if get_origin(hint) in (Union, UnionType) else (hint,)
    if value is None and type(None) in options:
        return None
    for option in options:
        base = get_origin(option) or option
        if base is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if base is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if base is list and isinstance(value, list):
            (item,) = get_args(option) or (Any,)
            items = [v if item is Any else _as_type(v, item) for v in value]
            if _WRONG not in items:
                return items
        if base in (bool, str, dict) and isinstance(value, base):
            return value
    return _WRONG


def _merge(config: Config, tree: dict[str, Any], origin: str) -> None:
    for section, values in tree.items():
        if section == "recipe":
            continue
        target = getattr(config, section, None)
        if not dataclasses.is_dataclass(target) or not isinstance(values, dict):
            raise AlexNetError(f"{origin}: unknown section {section!r}; sections are model, data, optim, train")
        hints = get_type_hints(type(target))
        for key, value in values.items():
            if key not in hints:
                if origin == SAVED:  # no field was ever renamed or removed: only a later version writes one
                    raise AlexNetError(
                        f"{origin}: unknown key {section}.{key}, written by a newer alexnet than this one "
                        f"({__version__}): upgrade alexnet to read it"
                    )
                elsewhere = [  # `train.lr` for `optim.lr`: the key of another section
                    f"{other.name}.{key}"
                    for other in dataclasses.fields(config)
                    if other.name != section and key in get_type_hints(type(getattr(config, other.name)))
                ]
                hint = f"did you mean {' or '.join(elsewhere)}? " if elsewhere else ""
                raise AlexNetError(f"{origin}: unknown key {section}.{key}; {hint}valid keys: {sorted(hints)}")
            setattr(target, key, _coerce(f"{section}.{key}", value, hints[key]))


def given_value(dotted: str, overrides: list[str] | None, fields: dict[str, Any]) -> str | None:
    """The name a command line gives ``section.key`` (``model.name``, ``data.dataset``), before any recipe is read:
    its keyword field (``section__key``, a flag's), else the last ``section.key=value`` override."""
    named = [
        i.split("=", 1)[1].strip().strip('"') for i in overrides or [] if i.replace(" ", "").startswith(f"{dotted}=")
    ]
    return fields.get(dotted.replace(".", "__")) or (named[-1] if named else None)


def load_config(recipe: str | None = None, overrides: list[str] | None = None, **fields: Any) -> Config:
    """Resolve a recipe, then ``section.key=value`` overrides, then keyword ``section__key=value`` fields.

    Raises:
        AlexNetError: for an unknown recipe, section, key or a value of the wrong type.
    """
    config = Config(recipe=recipe or "")
    if recipe:
        _merge(config, _read_recipe(recipe), f"recipe {recipe}")
    chosen, dropped = given_value("model.name", overrides, fields), None
    if chosen and chosen != config.model.name and config.model.overrides:
        # The recipe's overrides (input size, width...) were chosen for its own model: another model gets its own
        # defaults, so its input size sets the data's crop (alexnet_paper on 32 px data: 227 px crops, resized).
        dropped, config.model.overrides = (config.model.name, config.model.overrides), {}
    tree: dict[str, dict[str, Any]] = {}
    for item in overrides or []:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise AlexNetError(f"override {item!r} must look like section.key=value, e.g. optim.lr=0.01")
        dotted, text = item.split("=", 1)
        section, key = dotted.split(".", 1)
        if section == "model" and key.startswith("overrides."):
            tree.setdefault("model", {}).setdefault("overrides", dict(config.model.overrides))
            tree["model"]["overrides"][key.split(".", 1)[1]] = _parse_value(text)
            continue
        tree.setdefault(section, {})[key] = _parse_value(text)
    for name, value in fields.items():
        if value is not None:
            section, key = name.split("__", 1)
            tree.setdefault(section, {})[key] = value
    _merge(config, tree, "override")
    config.validate()
    if dropped:  # said once the model is known to be one
        log.info("model %s replaces the recipe's %s: its overrides %s are not applied", chosen, *dropped)
    return config


SAVED = "saved config"


def config_from_dict(tree: dict[str, Any]) -> Config:
    """Rebuild a `Config` saved by `Config.to_dict`."""
    config = Config(recipe=tree.get("recipe", ""))
    _merge(config, tree, SAVED)
    return config


def _number(bound: float) -> str:
    """A range bound as a user would write it: 4294967295, not 4.29497e+09; 0.5; inf."""
    return str(int(bound)) if math.isfinite(bound) and bound == int(bound) else f"{bound:g}"
