"""Augmentations beyond the paper's, from ``torchvision.transforms.v2``, as recipe options (all off by default: the
paper's crops, flips and PCA colour noise stay the pipeline of `BatchTransform`).

- ``data.random_resized_crop``: Inception's crop of 8-100% of the image at 3/4-4/3 aspect, resized to the crop side,
  in place of the paper's fixed-size random crop.
- ``data.auto_augment``: ``randaugment`` (2 ops at magnitude 9) or ``trivialaugment`` (one op at a random
  magnitude), per image, on the stored uint8 pixels.
- ``data.random_erasing``: the probability of erasing one random rectangle per image, after normalisation.
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
        mixers = []
        if cfg.mixup_alpha > 0:
            mixers.append(v2.MixUp(alpha=cfg.mixup_alpha, num_classes=num_classes))
        if cfg.cutmix_alpha > 0:
            mixers.append(v2.CutMix(alpha=cfg.cutmix_alpha, num_classes=num_classes))
        self.mix = None if not mixers else mixers[0] if len(mixers) == 1 else v2.RandomChoice(mixers)

    @property
    def active(self) -> bool:
        return bool(self.per_image or self.erase or self.mix)

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
        if self.erase is None and self.mix is None:
            return x, labels
        with _seeded(generator, x.device):
            if self.erase is not None:
                x = torch.stack([self.erase(image) for image in x]).contiguous(memory_format=torch.channels_last)
            if self.mix is not None:
                x, targets = self.mix(x, labels)
                return x.contiguous(memory_format=torch.channels_last), targets
        return x, labels
