"""The paper's augmentation on whole uint8 batches, on whatever device they are on (§4.1).

Every random draw comes from a ``torch.Generator`` the caller seeds from (seed, epoch, step), so a batch's
augmentation does not depend on how many workers decoded it or whether the run was resumed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

# fb.resnet.torch's ImageNet PCA, RGB on the [0, 1] pixel scale: eigenvalues and eigenvectors (columns).
IMAGENET_EIGVAL = (0.2175, 0.0188, 0.0045)
IMAGENET_EIGVEC = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)


def step_generator(seed: int, epoch: int, step: int) -> torch.Generator:
    """A CPU generator for one training step, independent of every other step's."""
    # Reduced to torch's int64 seed range (seed 2**32 - 1 overflowed it); unchanged below seed ~9e6, so every seed
    # used so far draws what it drew.
    return torch.Generator().manual_seed(((seed * 1_000_003 + epoch) * 1_000_003 + step) % (1 << 63))


def epoch_order(
    n: int, epoch: int, shuffle: bool, seed: int, rank: int = 0, world: int = 1, equal: bool = False
) -> torch.Tensor:
    """This process's sample indices for ``epoch``: the epoch's seeded permutation (the same in every process),
    every ``world``-th entry from ``rank``. ``equal`` trims to the same count in every process (training steps must
    match); without it each sample appears exactly once across processes (exact evaluation)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7919 + epoch)) if shuffle else None
    order = torch.arange(n) if order is None else order
    return order[rank::world][: shard_size(n, rank, world, equal)]


def shard_size(n: int, rank: int = 0, world: int = 1, equal: bool = False) -> int:
    """How many of ``n`` samples `epoch_order` gives process ``rank``."""
    return n // world if equal else len(range(rank, n, world))


def stack_images(images: list[torch.Tensor]) -> torch.Tensor:
    """(B, C, H, W) from (C, H, W) images, in channels-last memory.

    The decoders give (H, W, C) memory, so this is one straight copy per image where `torch.stack` transposes
    (about 8× slower), and the batch crops read channels-last about 5× faster than NCHW.
    """
    c, h, w = images[0].shape
    out = torch.empty(len(images), h, w, c, dtype=images[0].dtype)
    for i, img in enumerate(images):
        out[i] = img.permute(1, 2, 0)
    return out.permute(0, 3, 1, 2)


@dataclass
class BatchTransform:
    """uint8 (B, C, S, S) stored images → normalised float (B, C, input, input) model inputs.

    Attributes:
        input_size: side the model takes (px).
        crop: side of the random (train) or central (eval) crop, before resizing to ``input_size``.
        pad: padding before the random crop (px), for small images.
        pad_mode: ``constant`` (black borders) or ``reflect``: how the training crops' padding is filled.
        flip: random horizontal flips in training.
        pca_std: σ of the PCA colour noise α ~ N(0, σ²) (paper: 0.1); 0 disables it.
        mean: (C, 1, 1) channel means or (C, S, S) mean image, on the [0, 1] scale.
        std: (C, 1, 1) channel standard deviations on the [0, 1] scale, or None (subtract the mean only).
        eigval: (3,) RGB covariance eigenvalues on the [0, 1] scale.
        eigvec: (3, 3) eigenvectors as columns.
        pixel_scale: multiply [0, 1] pixels by this (255 gives the paper's raw pixel values).
    """

    input_size: int
    crop: int
    mean: torch.Tensor
    std: torch.Tensor | None = None
    pad: int = 0
    pad_mode: str = "constant"
    flip: bool = True
    pca_std: float = 0.0
    eigval: torch.Tensor | None = None
    eigvec: torch.Tensor | None = None
    pixel_scale: float = 1.0

    @classmethod
    def for_eval(
        cls,
        input_size: int,
        crop: int,
        mean: list[float] | torch.Tensor,
        std: list[float] | None,
        pad: int = 0,
        pixel_scale: float = 1.0,
    ) -> BatchTransform:
        """The evaluation transform (central crop, no augmentation): the one builder of it, for a training run's
        data and for a saved model's preprocessing alike. ``mean`` is per channel or a (C, S, S) mean image."""
        mean = mean if isinstance(mean, torch.Tensor) else torch.tensor(mean).view(len(mean), 1, 1)
        std_t = None if std is None else torch.tensor(std).view(len(std), 1, 1)
        return cls(input_size, crop, mean, std_t, pad, flip=False, pixel_scale=pixel_scale)

    def _normalize(self, x: torch.Tensor, mean: torch.Tensor, offset: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 crops → float in two in-place passes: ((x/255 − mean + offset) / std) · pixel_scale, resized to
        the model's input, channels-last. ``mean`` is (C, 1, 1) or the mean image's (B, C, k, k) crops;
        ``offset`` is the (B, 3) PCA colour noise."""
        std = self.std.to(x.device) if self.std is not None else torch.ones((), device=x.device)
        scale = self.pixel_scale / (255.0 * std)
        shift = -mean.to(x.device)
        if offset is not None:
            shift = shift + offset.to(x.device)[:, :, None, None]
        shift = shift * (self.pixel_scale / std)
        x = x.float().mul_(scale).add_(shift)  # in place: keeps the crops' channels-last layout
        if x.shape[-1] != self.input_size:
            antialias = x.shape[-1] > self.input_size
            x = F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False, antialias=antialias)
        return x.contiguous(memory_format=torch.channels_last)

    def _mean_for(self, b: int) -> torch.Tensor:
        """The mean as a (B, C, S, S) view when it is a per-pixel image, else (C, 1, 1)."""
        if self.mean.shape[-1] == 1:
            return self.mean
        mean = self.mean.expand(b, *self.mean.shape)
        return F.pad(mean, (self.pad,) * 4, mode=self.pad_mode) if self.pad else mean

    def _crops(self, x: torch.Tensor, oy: list[int], ox: list[int], flips: list[bool]) -> torch.Tensor:
        """(B, C, crop, crop) windows of ``x`` at per-image offsets, mirrored where asked, in channels-last memory.

        A slice per image: on a CPU this is 3-4× faster than one advanced-indexing gather over the batch.
        """
        n, c, k = len(oy), x.shape[1], self.crop
        out = torch.empty(n, k, k, c, dtype=x.dtype, device=x.device).permute(0, 3, 1, 2)
        for i in range(n):  # crop i comes from image i mod B (ten-crop takes ten crops of each image)
            patch = x[i % x.shape[0], :, oy[i] : oy[i] + k, ox[i] : ox[i] + k]
            out[i] = patch.flip(-1) if flips[i] else patch
        return out

    def train(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Random crop (after optional padding), random flip, PCA colour noise, normalisation."""
        b, _c, h, w = x.shape
        if self.pad:  # constant: black borders, as torchvision's RandomCrop(padding=...)
            x = F.pad(x, (self.pad,) * 4, mode=self.pad_mode)
            h, w = h + 2 * self.pad, w + 2 * self.pad
        # One crop offset per image, drawn uniformly from every valid position (257 - 227 = 30 for the paper).
        oy = torch.randint(0, h - self.crop + 1, (b,), generator=generator).tolist()
        ox = torch.randint(0, w - self.crop + 1, (b,), generator=generator).tolist()
        flips = (torch.rand(b, generator=generator) < 0.5).tolist() if self.flip else [False] * b
        mean = self._mean_for(b)
        if mean.shape[-1] != 1:
            mean = self._crops(mean, oy, ox, flips)
        offset = None
        if self.pca_std > 0 and x.shape[1] == 3 and self.eigval is not None and self.eigvec is not None:
            alpha = torch.randn(b, 3, generator=generator) * self.pca_std  # α_i ~ N(0, σ²), per image
            # [p1 p2 p3][α1λ1 α2λ2 α3λ3]ᵀ: one RGB offset per image, added to every pixel.
            offset = (alpha * self.eigval) @ self.eigvec.T  # (B, 3)
        return self._normalize(self._crops(x, oy, ox, flips), mean, offset)

    def eval(self, x: torch.Tensor) -> torch.Tensor:
        """The central crop, normalised."""
        top = (x.shape[-2] - self.crop) // 2
        left = (x.shape[-1] - self.crop) // 2
        mean = self.mean if self.mean.shape[-1] == 1 else self.mean[..., top : top + self.crop, left : left + self.crop]
        return self._normalize(x[..., top : top + self.crop, left : left + self.crop], mean)

    def ten_crop(self, x: torch.Tensor) -> torch.Tensor:
        """(10·B, C, input, input): four corners and the centre of the (padded) image, then their mirrors.

        Crop-major order: rows [k·B, (k+1)·B) are crop k of every image, so averaging over crops is
        ``probs.view(10, B, -1).mean(0)``.
        """
        b = x.shape[0]
        if self.pad:
            x = F.pad(x, (self.pad,) * 4, mode=self.pad_mode)
        h, w, c = x.shape[-2], x.shape[-1], self.crop
        corners = [(0, 0), (0, w - c), (h - c, 0), (h - c, w - c), ((h - c) // 2, (w - c) // 2)]
        oy = [t for t, _ in corners for _ in range(b)] * 2
        ox = [left for _, left in corners for _ in range(b)] * 2
        flips = [False] * (5 * b) + [True] * (5 * b)
        mean = self._mean_for(b)
        if mean.shape[-1] != 1:
            mean = self._crops(mean, oy, ox, flips)
        return self._normalize(self._crops(x, oy, ox, flips), mean)


def tta_views(x: torch.Tensor, flip: bool = False, translate: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Test-time views of model inputs ``x`` (B, C, H, W), view-major, and each view's weight.

    The views are ``x`` and, with ``flip``, its mirror; with ``translate`` t > 0 also ``x`` shifted by (−t, −t) and
    (+t, +t) with reflected borders (and their mirrors), which share half the weight, as airbench's TTA does.
    Returns (V·B, C, H, W) and (V,) weights summing to 1.
    """
    h, w = x.shape[-2:]
    if translate >= min(h, w):
        raise ValueError(f"a translation of {translate} px needs inputs wider than that; these are {h}×{w} px")
    bases = [x]
    if translate:
        t = translate
        padded = F.pad(x, (t,) * 4, mode="reflect")  # (B, C, H + 2t, W + 2t)
        bases += [padded[..., :h, :w], padded[..., 2 * t :, 2 * t :]]
    views = [v for base in bases for v in ((base, base.flip(-1)) if flip else (base,))]
    per_base = 2 if flip else 1
    weights = [1.0] * per_base + [0.5] * (len(views) - per_base)  # translated views: half the weight in all
    weights_t = torch.tensor(weights) / sum(weights)
    return torch.cat(views).contiguous(memory_format=torch.channels_last), weights_t
