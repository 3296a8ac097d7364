"""What a run's data section holds: the data set, its pipeline and its augmentation.

The run's whole configuration (`alexnet.config.Config`) holds one of these; the data package needs only this part.
Field checks (choices and ranges) are made with the rest in `alexnet.config.Config.validate`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

TENSOR_DATASETS = ("fashion-mnist", "mnist", "cifar10", "cifar100", "fake")  # read whole into tensors
FOLDER_DATASETS = ("imagenet", "folder")  # class folders of image files, decoded per sample
DATASETS = TENSOR_DATASETS + FOLDER_DATASETS
# torchvision's ImageNet normalisation (RGB, [0, 1] pixels): what its weights and our ImageNet recipes expect
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class DataConfig:
    dataset: str = "fashion-mnist"
    data_dir: str | None = None  # else $ALEXNET_DATA, else ./data
    download: bool = True  # let torchvision download where it can
    batch_size: int = 128
    eval_batch_size: int = 256
    workers: int = 2  # decoding processes for image folders
    resize: int | None = None  # folders: shorter side → resize, then central resize×resize (paper: 256)
    crop: int | None = None  # train crop side before the model's resize; None = model input (or stored size)
    pad: int = 0  # padding before random crops (px; small images)
    # how training crops see beyond the border: constant (black, torchvision's RandomCrop default) or reflect
    # (the image mirrored at its edge, as airbench and the DAWNBench CIFAR-10 records pad)
    pad_mode: str = "constant"
    flip: bool = True  # random horizontal flips
    # airbench's alternating flips: each image's mirror is drawn once, then flipped every other epoch, so every pair
    # of epochs sees both orientations (in-memory data sets only)
    alternate_flips: bool = False
    pca_std: float = 0.0  # σ of the paper's PCA colour noise (paper: 0.1)
    normalize: str = "meanstd"  # meanstd: (x - mean) / std; mean: x - mean (the paper)
    mean_image: bool = False  # subtract the per-pixel mean image (the paper) instead of per-channel means
    pixel_scale: float = 1.0  # pixel range after scaling: 1 → [0, 1]; 255 → the paper's raw pixel values
    mean: list[float] | None = None  # None: computed from the training set (ImageNet: torchvision's constants)
    std: list[float] | None = None
    pca_eigval: list[float] | None = None  # None: fb.resnet ImageNet constants (RGB, [0, 1] scale)
    pca_eigvec: list[list[float]] | None = None
    ten_crop: bool = False  # evaluate on 4 corners + centre and their mirrors, softmax averaged
    flip_tta: bool = False  # evaluate on the centre crop and its mirror, softmax averaged (ten_crop has mirrors)
    translate_tta: int = 0  # px: also evaluate on views shifted by (−t, −t) and (+t, +t) (airbench's TTA)
    max_bad_fraction: float = 0.01  # stop when more than this fraction of image files fail to decode
    in_memory_gb: float = 2.0  # folders: decode once and keep in memory (per process, on the device) if they fit
    # Hold out of the training split for validation (a fraction, or a count of images), stratified per class: what
    # selects then never sees the test split, which is evaluated once after the last epoch. 0: validate on the
    # data set's own validation (or test) split, as before.
    val_split: float = 0.0
    val_seed: int = 0  # seeds the held-out choice alone: every run and seed holds out the same images
    # Beyond the paper (alexnet.data.augment; all off by default): torchvision.transforms.v2's
    random_resized_crop: bool = False  # Inception's 8-100% area, 3/4-4/3 aspect crop instead of the fixed-size one
    auto_augment: str | None = None  # randaugment or trivialaugment, per image
    random_erasing: float = 0.0  # probability of erasing a rectangle per image
    cutout: int = 0  # px: the side of a square erased from every image (0: off)
    mixup_alpha: float = 0.0  # MixUp's Beta(α, α); > 0 turns it on (soft targets)
    cutmix_alpha: float = 0.0  # CutMix's Beta(α, α); with mixup_alpha too, one of the two per batch

    def eval_views(self) -> dict[str, Any]:
        """The test-time views this config asks for, as `alexnet.evaluation.evaluate` takes them."""
        return {"ten_crop": self.ten_crop, "flip": self.flip_tta, "translate": self.translate_tta}
