"""Build the training and validation data for a run: sources, loaders, and the batch transforms."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from .. import memory
from ..errors import AlexNetError, ConfigError
from .augment import Augment
from .batch import (
    IMAGENET_EIGVAL,
    IMAGENET_EIGVEC,
    BatchTransform,
    epoch_order,
    shard_size,
)
from .config import DATASETS, IMAGENET_MEAN, IMAGENET_STD, TENSOR_DATASETS, DataConfig
from .folder import (
    FolderDataset,
    FolderLoader,
    decode_split,
    find_splits,
    imagenet_class_names,
    list_classes,
    prepare_imagenet,
    scan_folder,
)
from .holdout import holdout_indices, split_indices
from .sources import TensorSplit, data_root, load_tensor_split

log = logging.getLogger(__name__)


class Loader(Protocol):
    def __len__(self) -> int: ...
    @property
    def largest_batch(self) -> int: ...
    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...


@dataclass
class TensorLoader:
    """Epoch-seeded batches of an in-memory split, kept on the compute device as uint8 (no workers needed)."""

    split: TensorSplit
    batch_size: int
    shuffle: bool
    seed: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    drop_last: bool = False
    rank: int = 0
    world: int = 1
    # airbench's alternating flips: image i is mirrored in epoch e when its once-drawn coin, XOR e odd, says so
    alternate_flips: bool = False
    _images: torch.Tensor | None = field(default=None, repr=False)

    def __len__(self) -> int:
        n = shard_size(len(self.split.labels), self.rank, self.world, self.drop_last)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    @property
    def largest_batch(self) -> int:
        """The most images one batch holds."""
        return min(self.batch_size, shard_size(len(self.split.labels), self.rank, self.world, self.drop_last))

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self._images is None:  # one copy to the device per run: 47 MB for Fashion-MNIST
            self._images = self.split.images.to(self.device)
            self._labels = self.split.labels.to(self.device)
        n = len(self._labels)
        order = epoch_order(n, epoch, self.shuffle, self.seed, self.rank, self.world, self.drop_last)
        order = order.to(self.device)
        coins = None
        if self.alternate_flips:  # one coin per image for the whole run, from the run's seed alone
            coins = torch.rand(n, generator=torch.Generator().manual_seed(self.seed * 7919 + 104_729)) < 0.5
            coins = (coins ^ bool(epoch % 2)).to(self.device)
        for i in range(start, len(self)):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            images = self._images[idx]
            if coins is not None:
                images = torch.where(coins[idx].view(-1, 1, 1, 1), images.flip(-1), images)
            yield images, self._labels[idx]


@dataclass
class Data:
    """What a run needs from its data."""

    train: Loader
    val: Loader
    classes: list[str]
    in_channels: int
    train_transform: BatchTransform
    eval_transform: BatchTransform
    meta: dict[str, Any]  # JSON-able: mean, std, sizes; saved with the weights
    # With data.val_split: the data set's own validation/test split, evaluated once after training (``val`` is then
    # the held-out part of the training split, whose indices ``held_out`` lists, into the full training split).
    test: Loader | None = None
    held_out: list[int] | None = None
    augment: Augment | None = None  # the options beyond the paper's (alexnet.data.augment)


def _training_loader(
    split: TensorSplit, cfg: DataConfig, seed: int, device: torch.device, rank: int, world: int
) -> TensorLoader:
    """Shuffled, augmented batches of an in-memory training split: whole batches only (every step the same size)."""
    return TensorLoader(
        split, cfg.batch_size, True, seed, device, True, rank, world, alternate_flips=cfg.alternate_flips
    )


def _subset(split: TensorSplit, idx: torch.Tensor) -> TensorSplit:
    return TensorSplit(split.images[idx], split.labels[idx], split.classes)


def carve(split: TensorSplit, cfg: DataConfig) -> tuple[TensorSplit, TensorSplit, list[int]]:
    """(training part, held-out part, held-out indices) of a training split, as ``data.val_split`` says."""
    held = holdout_indices(split.labels, cfg.val_split, cfg.val_seed)
    return _subset(split, split_indices(len(split.labels), held)), _subset(split, held), held.tolist()


def _channel_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of (N, C, H, W) uint8 images, on the [0, 1] scale (float64 accumulation)."""
    x = images.transpose(0, 1).reshape(images.shape[1], -1)
    mean = [float(c.double().mean() / 255) for c in x]
    std = [float(c.double().std() / 255) for c in x]
    return mean, std


def mean_image_of(split: TensorSplit) -> torch.Tensor:
    """The per-pixel mean image (C, S, S) of a split on the [0, 1] scale: the paper's "mean activity"."""
    return split.images.double().mean(0).div(255).float()


def training_mean_image(cfg: DataConfig, stored: int) -> torch.Tensor:
    """The mean image of ``cfg``'s training split, as training computed it (weights do not store it): the tensor
    data set, or the folder decoded at ``stored`` px."""
    if cfg.dataset in TENSOR_DATASETS:
        return mean_image_of(load_tensor_split(cfg.dataset, cfg.data_dir, train=True, download=False))
    samples, classes = scan_folder(find_splits(data_root(cfg.data_dir))[0])
    return mean_image_of(decode_split(samples, classes, stored, cfg.workers, cfg.max_bad_fraction))


def check_present(cfg: DataConfig) -> None:
    """Raise now if ``cfg``'s data set is not there (downloading it where ``cfg`` allows, as training would): for a
    command that trains several runs on several data sets, before the first, rather than hours later at the run
    that needs the missing one.

    Raises:
        DataNotFoundError: the message says how to get it; ValueError: an unknown data set.
    """
    if cfg.dataset not in DATASETS:
        raise ValueError(f"unknown data set {cfg.dataset!r}; choose one of {list(DATASETS)}")
    if cfg.dataset in TENSOR_DATASETS:
        for train in (True, False):
            load_tensor_split(cfg.dataset, cfg.data_dir, train=train, download=cfg.download)
        return
    train_dir, _ = find_splits(data_root(cfg.data_dir))
    list_classes(train_dir)


def build_eval_loader(
    cfg: DataConfig, stored: int, device: torch.device, rank: int = 0, world: int = 1
) -> tuple[Loader, list[str]]:
    """The validation loader and the class list, reading no training images.

    Folders take their classes from the names of ``train/``'s class folders (one directory listing), so a class
    missing from ``val/`` keeps its label.

    Args:
        cfg: the data section; ``dataset``, ``data_dir``, ``eval_batch_size``, ``workers`` are used.
        stored: side of the stored images (folders: the shorter-side resize and central square).
        device: where batches go.
        rank: this process's rank under torchrun.
        world: the number of processes.
    """
    if cfg.dataset not in DATASETS:
        raise ValueError(f"unknown data set {cfg.dataset!r}; choose one of {list(DATASETS)}")
    if cfg.dataset in TENSOR_DATASETS:
        split = load_tensor_split(cfg.dataset, cfg.data_dir, train=False, download=cfg.download)
        return TensorLoader(split, cfg.eval_batch_size, False, 0, device, rank=rank, world=world), split.classes
    root = data_root(cfg.data_dir)
    if cfg.dataset == "imagenet":
        prepare_imagenet(root)
    train_dir, val_dir = find_splits(root)
    classes = list_classes(train_dir)
    val_samples, _ = scan_folder(val_dir, classes)
    if cfg.dataset == "imagenet":
        classes = imagenet_class_names(root, classes)
    loader = FolderLoader(
        FolderDataset(val_samples, stored),
        cfg.eval_batch_size,
        False,
        0,
        cfg.workers,
        device,
        cfg.max_bad_fraction,
        rank=rank,
        world=world,
    )
    return loader, classes


def build_held_out_loader(cfg: DataConfig, stored: int, device: torch.device) -> tuple[Loader, list[str], list[int]]:
    """The loader of the images ``cfg.val_split`` holds out of the training split (as training chose them), the
    class list and their indices: what ``alexnet eval --split val`` reads.

    Raises:
        ConfigError: ``cfg.val_split`` is 0 (the run held nothing out).
    """
    if not cfg.val_split:
        raise ConfigError("this model was trained without data.val_split: it has no held-out validation split")
    if cfg.dataset in TENSOR_DATASETS:
        _, held, indices = carve(load_tensor_split(cfg.dataset, cfg.data_dir, train=True, download=False), cfg)
        return TensorLoader(held, cfg.eval_batch_size, False, 0, device), held.classes, indices
    samples, classes = scan_folder(find_splits(data_root(cfg.data_dir))[0])
    held_idx = holdout_indices(torch.tensor([label for _, label in samples]), cfg.val_split, cfg.val_seed).tolist()
    dataset = FolderDataset([samples[i] for i in held_idx], stored)
    loader = FolderLoader(dataset, cfg.eval_batch_size, False, 0, cfg.workers, device, cfg.max_bad_fraction)
    return loader, classes, held_idx


class ChannelsError(AlexNetError):
    """A per-channel setting (``data.mean``, ``data.std``) has another number of values than the images channels:
    ``channels`` is the images'."""

    def __init__(self, message: str, channels: int) -> None:
        super().__init__(message)
        self.channels = channels


def _per_channel(values: list[float], channels: int, name: str) -> list[float]:
    """One value per input channel: a single value applies to every channel (d2l's ``mean = [0.0]``)."""
    if len(values) == 1:
        return list(values) * channels
    if len(values) != channels:
        give = "1" if channels == 1 else f"1 or {channels}"
        raise ChannelsError(
            f"data.{name} has {len(values)} values for {channels}-channel images; give {give}", channels
        )
    return list(values)


# The last folder decoded into memory, for the next run in this process (`alexnet reproduce` trains dozens of runs
# on one folder): keyed by its files and size, one entry, so at most one folder's images are kept.
_DECODED: dict[tuple, tuple[TensorSplit, TensorSplit]] = {}


def _decoded_folder(
    train_samples: list, val_samples: list, classes: list[str], stored: int, cfg: DataConfig
) -> tuple[TensorSplit, TensorSplit]:
    key = (tuple(train_samples), tuple(val_samples), tuple(classes), stored)
    if key not in _DECODED:
        _DECODED.clear()
        began = time.perf_counter()
        train = decode_split(train_samples, classes, stored, cfg.workers, cfg.max_bad_fraction)
        val = decode_split(val_samples, classes, stored, cfg.workers, cfg.max_bad_fraction)
        log.info(
            "decoded %d + %d images into memory in %.1f s",
            len(train.labels),
            len(val.labels),
            time.perf_counter() - began,
        )
        _DECODED[key] = (train, val)
    return _DECODED[key]


def _leaves_room(decoded_gb: float) -> bool:
    """Whether a folder decoded to ``decoded_gb`` leaves half the memory left for the rest of the run: else it is
    streamed, as a folder over ``data.in_memory_gb`` is (in a container of 2 GB, a folder decoding to 1.9 GB was
    kept in memory, and the run would have been killed without a word)."""
    limit = memory.available()
    if limit is None or decoded_gb * 1e9 <= limit.bytes / 2:
        return True
    log.info(
        "the folder decodes to %.1f GB and %.1f GB is %s: it is read from disk each epoch, not kept in memory",
        decoded_gb,
        limit.bytes / 1e9,
        limit.bound,
    )
    return False


def build_data(
    cfg: DataConfig,
    input_size: int,
    device: torch.device,
    seed: int = 0,
    rank: int = 0,
    world: int = 1,
    shard_val: bool = True,
) -> Data:
    """Sources, loaders and transforms for ``cfg``.

    Args:
        cfg: the data section of the run's config.
        input_size: the model's input side (px).
        device: where batches are produced and augmented.
        seed: the run's seed; shuffling and augmentation derive from it and the epoch.
        rank: this process's rank under torchrun.
        world: the number of processes.
        shard_val: split the validation set across processes (False: every process evaluates all of it, as a
            model spread over the processes needs).

    Raises:
        DataNotFoundError: the data set is missing; the message says how to get it.
    """
    val_rank, val_world = (rank, world) if shard_val else (0, 1)
    if cfg.dataset not in DATASETS:
        raise ValueError(f"unknown data set {cfg.dataset!r}; choose one of {list(DATASETS)}")
    mean_image = None
    train: Loader
    val: Loader
    test: Loader | None = None
    held_out: list[int] | None = None
    if cfg.dataset in TENSOR_DATASETS:
        train_split = load_tensor_split(cfg.dataset, cfg.data_dir, train=True, download=cfg.download)
        in_channels, stored = train_split.images.shape[1], train_split.images.shape[-1]
        if cfg.resize and cfg.resize != stored:  # said, not refused: a folder recipe may run on a tensor set (fake)
            log.info(
                "data.resize=%d is for image folders: %s is stored at %d px and used at that size (data.crop and "
                "model.overrides.input_size set the crop and the model's input)",
                cfg.resize,
                cfg.dataset,
                stored,
            )
        val, classes = build_eval_loader(cfg, stored, device, val_rank, val_world)
        if cfg.val_split:
            train_split, held_split, held_out = carve(train_split, cfg)
            test, val = (
                val,
                TensorLoader(held_split, cfg.eval_batch_size, False, 0, device, rank=val_rank, world=val_world),
            )
        mean, std = _channel_stats(train_split.images)  # of the images that train
        if cfg.mean_image:
            mean_image = mean_image_of(train_split)
        train = _training_loader(train_split, cfg, seed, device, rank, world)
    else:
        in_channels = 3
        stored = cfg.resize or (256 if input_size >= 128 else input_size)
        mean, std = list(IMAGENET_MEAN), list(IMAGENET_STD)
        val, classes = build_eval_loader(cfg, stored, device, val_rank, val_world)  # first: prepares ImageNet's val
        train_samples, _ = scan_folder(find_splits(data_root(cfg.data_dir))[0])
        assert isinstance(val, FolderLoader)  # build_eval_loader's folder branch
        decoded_gb = (len(train_samples) + len(val.dataset)) * 3 * stored**2 / 1e9
        room = _leaves_room(decoded_gb) if decoded_gb <= cfg.in_memory_gb else True
        if decoded_gb <= cfg.in_memory_gb and room:
            # Small folders (the CIFAR-10 JPEGs: 0.18 GB) are decoded once, then batched like the in-memory data sets:
            # the same images in the same order as streaming them, without decoding them again every epoch.
            train_split, val_split = _decoded_folder(train_samples, val.dataset.samples, classes, stored, cfg)
            val = TensorLoader(val_split, cfg.eval_batch_size, False, 0, device, rank=val_rank, world=val_world)
            if cfg.val_split:
                train_split, held_split, held_out = carve(train_split, cfg)
                test, val = (
                    val,
                    TensorLoader(held_split, cfg.eval_batch_size, False, 0, device, rank=val_rank, world=val_world),
                )
            if cfg.mean_image:
                mean_image = mean_image_of(train_split)
            train = _training_loader(train_split, cfg, seed, device, rank, world)
        else:
            over = (
                f"over data.in_memory_gb={cfg.in_memory_gb}. Raise that"
                if room
                else "more than half the memory left. Free some"
            )
            if cfg.alternate_flips:
                raise AlexNetError(
                    f"data.alternate_flips needs the images in memory; this folder decodes to {decoded_gb:.1f} GB, "
                    f"{over}, or use random flips"
                )
            if cfg.mean_image:
                raise AlexNetError(
                    "data.mean_image=true needs a per-pixel mean of the training images, computed for data sets "
                    f"held in memory; this folder decodes to {decoded_gb:.1f} GB, {over}, or use the per-channel "
                    "mean (data.mean_image=false)"
                )
            if cfg.val_split:
                labels = torch.tensor([label for _, label in train_samples])
                held = holdout_indices(labels, cfg.val_split, cfg.val_seed)
                held_out = held.tolist()
                held_samples = [train_samples[i] for i in held_out]
                train_samples = [train_samples[i] for i in split_indices(len(labels), held).tolist()]
                test, val = (
                    val,
                    FolderLoader(
                        FolderDataset(held_samples, stored),
                        cfg.eval_batch_size,
                        False,
                        0,
                        cfg.workers,
                        device,
                        cfg.max_bad_fraction,
                        rank=val_rank,
                        world=val_world,
                    ),
                )
            train = FolderLoader(
                FolderDataset(train_samples, stored),
                cfg.batch_size,
                True,
                seed,
                cfg.workers,
                device,
                cfg.max_bad_fraction,
                drop_last=True,
                rank=rank,
                world=world,
            )
    mean, std = _per_channel(cfg.mean or mean, in_channels, "mean"), _per_channel(cfg.std or std, in_channels, "std")
    train_tf, eval_tf, meta = build_transforms(cfg, input_size, stored, mean, std, mean_image)
    if cfg.val_split:
        meta["val_split"] = {"images": len(held_out or []), "seed": cfg.val_seed}
    augment = Augment(cfg, train_tf.crop, len(classes))
    return Data(train, val, classes, in_channels, train_tf, eval_tf, meta, test, held_out, augment)


def build_transforms(
    cfg: DataConfig,
    input_size: int,
    stored: int,
    mean: list[float],
    std: list[float],
    mean_image: torch.Tensor | None = None,
) -> tuple[BatchTransform, BatchTransform, dict[str, Any]]:
    """The training and evaluation transforms for images stored at ``stored`` px, and the preprocessing metadata
    saved with the weights (which rebuilds the same evaluation transform: `BatchTransform.for_eval`)."""
    crop = cfg.crop or min(input_size, stored)
    # Evaluation takes the central crop of the stored image, unpadded: a larger one slices a corner of it (a 34 px
    # crop of 32 px images is x[..., -1:33, -1:33], the last pixel alone, resized; beyond the padding, training's
    # random offsets fail too).
    if crop > stored:
        raise ConfigError(f"data.crop={crop} is larger than the images' {stored} px: choose at most {stored}")
    # A translation by the image's side or more can crop it away entirely (and a mirror, pad_mode "reflect", reaches
    # at most one side - 1 beyond it); data.pad's own range only bounds it at 1024.
    if cfg.pad >= stored:
        raise ConfigError(
            f"data.pad={cfg.pad} must be less than the images' {stored} px (a shift that far crops them away)"
        )
    norm_std = std if cfg.normalize == "meanstd" else None
    eval_tf = BatchTransform.for_eval(
        input_size, crop, mean_image if mean_image is not None else mean, norm_std, cfg.pad, cfg.pixel_scale
    )
    train_tf = dataclasses.replace(
        eval_tf,
        flip=cfg.flip and not cfg.alternate_flips,  # alternating flips are the loader's (TensorLoader)
        pad_mode=cfg.pad_mode,
        pca_std=cfg.pca_std,
        eigval=torch.tensor(cfg.pca_eigval or IMAGENET_EIGVAL),
        eigvec=torch.tensor(cfg.pca_eigvec or IMAGENET_EIGVEC),
    )
    meta = {
        "dataset": cfg.dataset,
        "mean": mean,
        "std": norm_std,
        "stored_size": stored,
        "crop": crop,
        "input_size": input_size,
        "pad": cfg.pad,
        "pixel_scale": cfg.pixel_scale,
        "mean_image": cfg.mean_image,
        "resize": stored if cfg.dataset not in TENSOR_DATASETS else None,
    }
    return train_tf, eval_tf, meta
