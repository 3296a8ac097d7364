"""The batch augmentation: crops, flips, PCA noise statistics, ten-crop averaging."""

import dataclasses

import pytest
import torch

from alexnet.data.batch import IMAGENET_EIGVAL, IMAGENET_EIGVEC, BatchTransform, step_generator, tta_views
from alexnet.data.config import DataConfig
from alexnet.data.pipeline import TensorLoader, build_transforms
from alexnet.data.sources import TensorSplit
from alexnet.errors import ConfigError
from alexnet.evaluation import StepSettings, evaluate
from tests.conftest import make_folder


def _tf(**kw):
    base = dict(input_size=4, crop=4, mean=torch.zeros(3, 1, 1), std=None, flip=False)
    base.update(kw)
    return BatchTransform(**base)


def test_random_crop_is_a_window_of_the_padded_image():
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).view(2, 3, 6, 6).remainder(256).byte()
    tf = _tf(input_size=4, crop=4, pad=1)
    out = tf.train(x, step_generator(0, 0, 0)) * 255
    padded = torch.nn.functional.pad(x.float(), (1, 1, 1, 1))
    for b in range(2):
        windows = [padded[b, :, i : i + 4, j : j + 4] for i in range(5) for j in range(5)]
        assert any(torch.allclose(out[b], w, atol=1e-3) for w in windows)
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_reflect_padding_crops_are_windows_of_the_mirrored_image():
    """data.pad_mode="reflect": the border a crop reaches is the image mirrored at its edge, not black."""
    x = torch.randint(1, 255, (32, 3, 6, 6), dtype=torch.uint8)  # no zero pixel: a black border would show
    out = _tf(pad=1, pad_mode="reflect").train(x, step_generator(0, 0, 0)) * 255
    mirrored = torch.nn.functional.pad(x.float(), (1, 1, 1, 1), mode="reflect")
    black = torch.nn.functional.pad(x.float(), (1, 1, 1, 1))
    near_edge = 0
    for b in range(32):
        assert any(
            torch.allclose(out[b], mirrored[b, :, i : i + 4, j : j + 4], atol=1e-3) for i in range(5) for j in range(5)
        )
        near_edge += not any(
            torch.allclose(out[b], black[b, :, i : i + 4, j : j + 4], atol=1e-3) for i in range(5) for j in range(5)
        )
    assert near_edge > 10  # 16 of the 25 offsets reach past the edge


def test_pad_mode_reaches_the_training_transform_only():
    train_tf, eval_tf, _ = build_transforms(DataConfig(pad=4, pad_mode="reflect"), 32, 32, [0.5] * 3, [0.25] * 3)
    assert (train_tf.pad_mode, eval_tf.pad_mode) == ("reflect", "constant")  # saved models rebuild eval's alone
    for mode in ("reflect", "constant"):  # a mirror cannot reach that far; black borders would crop the image away
        with pytest.raises(ConfigError, match="less than the images' 28 px"):
            build_transforms(DataConfig(pad=28, pad_mode=mode), 28, 28, [0.5], [0.25])
    build_transforms(DataConfig(pad=27), 28, 28, [0.5], [0.25])


def test_flips_happen_about_half_the_time_and_are_mirrors():
    x = torch.randint(0, 255, (400, 1, 5, 5), dtype=torch.uint8)
    tf = _tf(input_size=5, crop=5, flip=True, mean=torch.zeros(1, 1, 1))
    out = tf.train(x, step_generator(1, 0, 0)) * 255
    flipped = [torch.allclose(o, xi.float().flip(-1), atol=1e-3) for o, xi in zip(out, x)]
    same = [torch.allclose(o, xi.float(), atol=1e-3) for o, xi in zip(out, x)]
    assert all(f or s for f, s in zip(flipped, same))
    assert 150 < sum(flipped) < 250


def test_same_step_same_augmentation_other_step_differs():
    x = torch.randint(0, 255, (8, 3, 12, 12), dtype=torch.uint8)
    tf = _tf(
        input_size=8,
        crop=8,
        pad=2,
        flip=True,
        pca_std=0.1,
        eigval=torch.tensor(IMAGENET_EIGVAL),
        eigvec=torch.tensor(IMAGENET_EIGVEC),
    )
    a = tf.train(x, step_generator(0, 1, 5))
    assert torch.equal(a, tf.train(x, step_generator(0, 1, 5)))
    assert not torch.equal(a, tf.train(x, step_generator(0, 1, 6)))


def test_pca_noise_has_the_requested_statistics():
    """Offset = V (α ⊙ λ), α ~ N(0, σ²): in the eigenbasis the offsets have std σ·λ_i and are uncorrelated."""
    eigval, eigvec = torch.tensor(IMAGENET_EIGVAL), torch.tensor(IMAGENET_EIGVEC)
    sigma, n = 0.1, 20000
    x = torch.full((n, 3, 1, 1), 128, dtype=torch.uint8)
    tf = _tf(input_size=1, crop=1, pca_std=sigma, eigval=eigval, eigvec=eigvec)
    offsets = (tf.train(x, step_generator(3, 0, 0)) - 128 / 255).view(n, 3).double()
    coords = offsets @ eigvec.double()  # columns are orthonormal eigenvectors: recover α ⊙ λ
    assert coords.mean(0).abs().max() < 4 * sigma * eigval.max() / n**0.5
    assert torch.allclose(coords.std(0), sigma * eigval.double(), rtol=0.03)
    corr = torch.corrcoef(coords.T)
    assert (corr - torch.eye(3, dtype=corr.dtype)).abs().max() < 0.03
    no_noise = _tf(input_size=1, crop=1, pca_std=0.0, eigval=eigval, eigvec=eigvec)
    assert torch.allclose(no_noise.train(x[:10], step_generator(0, 0, 0)), torch.full((10, 3, 1, 1), 128 / 255))


class _Loader:
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return 1

    def batches(self, epoch, start=0):
        yield self.x, self.y


def test_ten_crop_equals_hand_computed_average():
    torch.manual_seed(0)
    x = torch.randint(0, 255, (3, 3, 8, 8), dtype=torch.uint8)
    y = torch.tensor([0, 1, 2])
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 6 * 6, 3)).eval()
    tf = _tf(input_size=6, crop=6)
    settings = StepSettings(torch.device("cpu"), "fp32", 0, 3, progress=False)
    got = evaluate(model, _Loader(x, y), tf, settings, ten_crop=True)
    # By hand: the ten 6×6 crops of each 8×8 image, softmax-averaged.
    xf = x.double() / 255
    crops = [xf[..., i : i + 6, j : j + 6] for i, j in [(0, 0), (0, 2), (2, 0), (2, 2), (1, 1)]]
    crops += [c.flip(-1) for c in crops]
    model64 = model.double()
    probs = torch.stack([model64(c).softmax(1) for c in crops]).mean(0)
    expected_loss = torch.nn.functional.nll_loss(probs.log(), y).item()
    expected_acc = 100 * (probs.argmax(1) == y).double().mean().item()
    assert got.loss == pytest.approx(expected_loss, rel=1e-5)
    assert got.acc1 == pytest.approx(expected_acc)
    centre = evaluate(model.float(), _Loader(x, y), tf, settings, ten_crop=False)
    assert centre.loss != pytest.approx(got.loss, rel=1e-6)


def test_translate_tta_equals_hand_computed_weighted_average():
    torch.manual_seed(0)
    x = torch.randint(0, 255, (3, 1, 6, 6), dtype=torch.uint8)
    y = torch.tensor([0, 1, 2])
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36, 3)).eval()
    tf = _tf(input_size=6, crop=6, mean=torch.zeros(1, 1, 1))
    settings = StepSettings(torch.device("cpu"), "fp32", 0, 3, progress=False)
    got = evaluate(model, _Loader(x, y), tf, settings, flip=True, translate=1)
    # By hand: the image and its shifts by one pixel up-left and down-right (borders reflected), each with its
    # mirror; the unshifted pair weighs 1/4 each, the four shifted views 1/8 each (airbench's weights).
    xf = x.double() / 255
    padded = torch.nn.functional.pad(xf, (1, 1, 1, 1), mode="reflect")
    bases = [xf, padded[..., :6, :6], padded[..., 2:, 2:]]
    assert torch.equal(bases[1][..., 1:, 1:], xf[..., :5, :5])  # shifted down-right by one pixel
    model64 = model.double()
    probs = sum(
        w * model64(v).softmax(1) for base, w in zip(bases, (0.25, 0.125, 0.125)) for v in (base, base.flip(-1))
    )
    assert got.loss == pytest.approx(torch.nn.functional.nll_loss(probs.log(), y).item(), rel=1e-5)
    plain = evaluate(model.float(), _Loader(x, y), tf, settings, flip=True)
    assert plain.loss != pytest.approx(got.loss, rel=1e-6)


def test_tta_views_are_view_major_with_weights_summing_to_one():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    views, weights = tta_views(x, flip=False, translate=1)
    assert views.shape == (6, 1, 4, 4) and torch.equal(views[:2], x)
    assert weights.tolist() == pytest.approx([0.5, 0.25, 0.25])
    views, weights = tta_views(x)
    assert torch.equal(views, x) and weights.tolist() == [1.0]
    with pytest.raises(ValueError, match="wider than that"):
        tta_views(x, translate=4)


def test_alternating_flips_mirror_each_image_in_every_other_epoch():
    images = torch.randint(0, 255, (64, 1, 5, 5), dtype=torch.uint8)
    split = TensorSplit(images, torch.arange(64), [str(i) for i in range(64)])

    def seen(epoch, alternate=True, seed=3):
        loader = TensorLoader(split, 16, True, seed, alternate_flips=alternate)
        out = torch.empty_like(images)
        for batch, labels in loader.batches(epoch):
            out[labels] = batch  # labels are the indices
        return out

    first = seen(0)
    flipped = torch.tensor([not torch.equal(a, b) for a, b in zip(first, images)])
    assert torch.equal(first, torch.where(flipped.view(-1, 1, 1, 1), images.flip(-1), images))
    assert 16 < flipped.sum() < 48  # a coin per image
    for epoch in (1, 3):
        assert torch.equal(seen(epoch), torch.where(flipped.view(-1, 1, 1, 1), images, images.flip(-1)))
    assert torch.equal(seen(2), first)
    assert torch.equal(seen(0, alternate=False), images)
    assert not torch.equal(seen(0, seed=4), seen(0))


def test_mean_image_is_subtracted_at_the_crop_offset(tmp_path):
    from alexnet.data.config import DataConfig
    from alexnet.data.pipeline import build_data
    from alexnet.errors import AlexNetError

    cfg = DataConfig(dataset="fake", mean_image=True, normalize="mean", crop=24, batch_size=8)
    data = build_data(cfg, 24, torch.device("cpu"))
    mean = data.train.split.images.double().mean(0)  # (3, 32, 32) on the 0-255 scale
    x = mean.round().clamp(0, 255).byte().unsqueeze(0).repeat(4, 1, 1, 1)
    out = data.train_transform.train(x, step_generator(0, 0, 0))
    assert out.abs().max() < 1 / 255  # the mean image minus its own crop is ~0 wherever the crop lands
    assert data.eval_transform.eval(x).abs().max() < 1 / 255
    assert data.eval_transform.ten_crop(x).abs().max() < 1 / 255
    make_folder(tmp_path, per_class=2, size=32)
    folder = DataConfig(dataset="folder", data_dir=str(tmp_path), mean_image=True, workers=0)
    assert build_data(folder, 24, torch.device("cpu")).train_transform.mean.shape == (3, 24, 24)  # held in memory
    with pytest.raises(AlexNetError, match="mean_image"):
        build_data(dataclasses.replace(folder, in_memory_gb=0), 24, torch.device("cpu"))


def test_step_generators_take_every_valid_seed_and_keep_the_small_ones_draws():
    """The largest seed (2**32 - 1) overflowed torch's int64 seed; seeds below ~9e6 draw what they always drew."""
    for seed, epoch, step in ((0, 0, 0), (1, 27, 174), (9_000_000, 40, 200)):
        old = torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 1_000_003 + step)
        assert torch.equal(torch.rand(4, generator=step_generator(seed, epoch, step)), torch.rand(4, generator=old))
    big = [torch.rand(4, generator=step_generator(2**32 - 1, 0, step)) for step in (0, 1)]
    assert not torch.equal(*big)


def test_a_resize_a_tensor_data_set_does_not_take_is_said(caplog):
    """`data.resize` sizes image folders; the tensor sets are used as stored, which `--set data.resize=64` on the
    fake (or CIFAR-10) set did silently."""
    import logging

    from alexnet.data.config import DataConfig
    from alexnet.data.pipeline import build_data

    with caplog.at_level(logging.INFO, logger="alexnet"):
        data = build_data(DataConfig(dataset="fake", resize=64, batch_size=8), 32, torch.device("cpu"))
    assert data.meta["stored_size"] == 32
    assert "data.resize=64 is for image folders: fake is stored at 32 px" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="alexnet"):
        build_data(DataConfig(dataset="fake", resize=32, batch_size=8), 32, torch.device("cpu"))
    assert "data.resize" not in caplog.text
