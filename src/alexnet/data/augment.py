"""Augmentations beyond the paper's, from ``torchvision.transforms.v2``, as recipe options (all off by default: the
paper's crops, flips and PCA colour noise stay the pipeline of `BatchTransform`).

- ``data.random_resized_crop``: Inception's crop of 8-100% of the image at 3/4-4/3 aspect, resized to the crop side,
  in place of the paper's fixed-size random crop.
- ``data.auto_augment``: ``randaugment`` (2 ops at magnitude 9) or ``trivialaugment`` (one op at a random
  magnitude), per image, on the stored uint8 pixels.
- ``data.random_erasing``: the probability of erasing one random rectangle per image, after normalisation.
- ``data.cutout``: the side in pixels of a square erased from every image, after normalisation (DeVries and Taylor's
  Cutout, as airbench96 and Page's CIFAR-10 ResNet use it: 8-12 px at 32), the whole batch at once.
- ``data.mixup_alpha``, ``data.cutmix_alpha``: batch-level mixing with soft targets (one of the two per batch, at
  random, when both are set), which the loss takes as class probabilities (label smoothing applies on top).

v2's transforms draw from torch's global generator; each call here seeds it from the run's step generator inside
``fork_rng``, so an epoch's augmentation is the same when a run resumes and the global stream is left alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torchvision.transforms import v2

from ..errors import ConfigError
from .config import DataConfig

AUTO_AUGMENTS = ("randaugment", "trivialaugment")


@contextlib.contextmanager
def _seeded(generator: torch.Generator, device: torch.device) -> Iterator[None]:
    """torch's global RNG seeded from ``generator`` (one draw), restored afterwards."""
    seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


class Augment:
    """The options of ``cfg`` that are on; `active` is False when none is (nothing then runs, nothing is drawn)."""

    def __init__(self, cfg: DataConfig, crop: int, num_classes: int) -> None:
        self.per_image: list[Callable[[torch.Tensor], torch.Tensor]] = []
        if cfg.random_resized_crop:
            self.per_image.append(v2.RandomResizedCrop(crop, antialias=True))
        if cfg.auto_augment == "randaugment":
            self.per_image.append(v2.RandAugment())
        elif cfg.auto_augment == "trivialaugment":
            self.per_image.append(v2.TrivialAugmentWide())
        self.erase = v2.RandomErasing(p=cfg.random_erasing) if cfg.random_erasing > 0 else None
        if cfg.cutout >= crop:
            raise ConfigError(f"data.cutout={cfg.cutout} px erases the whole {crop} px crop; choose fewer pixels")
        self.cutout = cfg.cutout
        mixers = []
        if cfg.mixup_alpha > 0:
            mixers.append(v2.MixUp(alpha=cfg.mixup_alpha, num_classes=num_classes))
        if cfg.cutmix_alpha > 0:
            mixers.append(v2.CutMix(alpha=cfg.cutmix_alpha, num_classes=num_classes))
        self.mix = None if not mixers else mixers[0] if len(mixers) == 1 else v2.RandomChoice(mixers)

    @property
    def active(self) -> bool:
        return bool(self.per_image or self.erase or self.cutout or self.mix)

    def before(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """uint8 (B, C, S, S) stored images → uint8 (B, C, s, s), each image its own draw (s: the crop side with a
        random resized crop, else S)."""
        if not self.per_image:
            return images
        with _seeded(generator, images.device):
            out = []
            for image in images:
                for op in self.per_image:
                    image = op(image)
                out.append(image)
        return torch.stack(out).contiguous(memory_format=torch.channels_last)

    def after(
        self, x: torch.Tensor, labels: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised float (B, C, H, W) inputs and int labels → inputs and the targets the loss takes: the labels,
        or (B, classes) probabilities when a batch is mixed."""
        if self.cutout:
            x = cutout(x, self.cutout, generator)
        if self.erase is None and self.mix is None:
            return x, labels
        with _seeded(generator, x.device):
            if self.erase is not None:
                x = torch.stack([self.erase(image) for image in x]).contiguous(memory_format=torch.channels_last)
            if self.mix is not None:
                x, targets = self.mix(x, labels)
                return x.contiguous(memory_format=torch.channels_last), targets
        return x, labels


def cutout(x: torch.Tensor, side: int, generator: torch.Generator) -> torch.Tensor:
    """(B, C, H, W) images with a ``side`` × ``side`` square zeroed in each, at a place drawn per image from
    ``generator``, wholly inside the image (as `v2.RandomErasing` places its rectangles). One mask for the batch:
    v2's erasing runs image by image, 26 ms a batch of 256 at 32 px on one core, a sixth of a training step."""
    b, _, h, w = x.shape
    top = torch.randint(0, h - side + 1, (b, 1), generator=generator).to(x.device)
    left = torch.randint(0, w - side + 1, (b, 1), generator=generator).to(x.device)
    rows = torch.arange(h, device=x.device)
    cols = torch.arange(w, device=x.device)
    inside_rows = (rows >= top) & (rows < top + side)  # (B, H)
    inside_cols = (cols >= left) & (cols < left + side)  # (B, W)
    # clone keeps the batch's memory format (channels-last); masked_fill would return a contiguous tensor.
    return x.clone().masked_fill_((inside_rows[:, :, None] & inside_cols[:, None, :])[:, None], 0.0)
