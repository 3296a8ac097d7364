"""The augmentations beyond the paper's, from torchvision.transforms.v2: what each does to a batch, seeded by the
step's generator, and the soft targets the loss takes."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from alexnet.data.augment import Augment
from alexnet.data.config import DataConfig
from alexnet.errors import ConfigError
from alexnet.training.engine import training_loss
from alexnet.training.fit import fit
from tests.conftest import tiny_config


def _batch(b=8, size=32):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (b, 3, size, size), generator=g, dtype=torch.uint8)
    return images, torch.arange(b) % 4


def _augment(**fields):
    return Augment(dataclasses.replace(DataConfig(), **fields), crop=24, num_classes=4)


def test_nothing_is_on_by_default():
    augment = _augment()
    images, labels = _batch()
    g = torch.Generator().manual_seed(1)
    assert not augment.active
    assert augment.before(images, g) is images and augment.after(images.float(), labels, g)[1] is labels
    assert torch.equal(g.get_state(), torch.Generator().manual_seed(1).get_state())  # nothing drawn


@pytest.mark.parametrize(
    "alphas", [{"mixup_alpha": 0.4}, {"cutmix_alpha": 1.0}, {"mixup_alpha": 0.4, "cutmix_alpha": 1.0}]
)
def test_mixing_gives_soft_targets_summing_to_one(alphas):
    augment = _augment(**alphas)
    images, labels = _batch()
    x = images.float() / 255
    out, targets = augment.after(x, labels, torch.Generator().manual_seed(2))
    assert out.shape == x.shape and targets.shape == (8, 4)
    assert torch.allclose(targets.sum(1), torch.ones(8))
    # Each row mixes the image's own class with its partner's (v2 pairs the batch with its roll by one).
    partner = labels.roll(1)
    own = targets[torch.arange(8), labels] + torch.where(partner == labels, 0.0, targets[torch.arange(8), partner])
    assert torch.allclose(own, torch.ones(8)) and (targets.max(1).values < 1).any()
    again, same = augment.after(x, labels, torch.Generator().manual_seed(2))
    assert torch.equal(again, out) and torch.equal(same, targets)  # the step's generator decides


@pytest.mark.parametrize(
    "fields", [{"auto_augment": "randaugment"}, {"auto_augment": "trivialaugment"}, {"random_resized_crop": True}]
)
def test_per_image_ops_keep_uint8_and_are_seeded(fields):
    augment = _augment(**fields)
    images, _ = _batch()
    a = augment.before(images, torch.Generator().manual_seed(3))
    b = augment.before(images, torch.Generator().manual_seed(3))
    side = 24 if fields.get("random_resized_crop") else 32
    assert a.dtype == torch.uint8 and a.shape == (8, 3, side, side) and torch.equal(a, b)
    if side == 32:
        assert not torch.equal(a, images)


def test_random_erasing_erases_a_rectangle():
    augment = _augment(random_erasing=1.0)
    x = torch.ones(4, 3, 32, 32)
    out, _ = augment.after(x, torch.arange(4), torch.Generator().manual_seed(4))
    erased = (out == 0).all(1)  # v2 erases with zeros, across channels
    assert all(0 < e.sum() < 32 * 32 for e in erased)


@pytest.mark.parametrize("side", [1, 8, 12])
def test_cutout_erases_one_square_of_its_side_from_every_image(side):
    augment = _augment(cutout=side)
    x = torch.ones(16, 3, 24, 24)
    out, _ = augment.after(x, torch.arange(16), torch.Generator().manual_seed(7))
    for image in (out == 0).all(1):  # (24, 24): where every channel was erased
        rows, cols = image.nonzero().unbind(1)
        assert image.sum() == side * side and rows.max() - rows.min() == cols.max() - cols.min() == side - 1
    corners = {tuple(image.nonzero()[0].tolist()) for image in (out == 0).all(1)}
    assert len(corners) > 1  # each image its own place
    again, _ = augment.after(x, torch.arange(16), torch.Generator().manual_seed(7))
    assert torch.equal(again, out)  # the step's generator decides
    last = augment.after(x.contiguous(memory_format=torch.channels_last), torch.arange(16), torch.Generator())[0]
    assert last.is_contiguous(memory_format=torch.channels_last)


def test_cutout_as_large_as_the_crop_is_refused():
    with pytest.raises(ConfigError, match="data.cutout=24"):
        _augment(cutout=24)


def test_label_smoothing_applies_on_top_of_soft_targets():
    logits = torch.randn(5, 4, generator=torch.Generator().manual_seed(5))
    soft = torch.softmax(torch.randn(5, 4, generator=torch.Generator().manual_seed(6)), 1)
    eps = 0.1
    expected = -((1 - eps) * soft + eps / 4).mul(logits.log_softmax(1)).sum(1).mean()
    assert torch.allclose(training_loss(logits, soft, eps), expected, atol=1e-6)
    hard = torch.tensor([0, 1, 2, 3, 0])
    assert torch.allclose(training_loss(logits, hard, eps), training_loss(logits, torch.eye(4)[hard], eps), atol=1e-6)


def test_a_run_trains_with_every_option_on(tmp_path):
    options = [
        "data.mixup_alpha=0.4",
        "data.cutmix_alpha=1.0",
        'data.auto_augment="trivialaugment"',
        "data.random_erasing=0.25",
        "data.cutout=4",
        "data.random_resized_crop=true",
        "optim.label_smoothing=0.1",
    ]
    result = fit(tiny_config(tmp_path / "run", "train.epochs=1", *options))
    assert result.final is not None and result.final.finite
