"""Fine-tuning pieces: freezing by name or depth, the lower learning rate of pretrained layers, a whitened conv1."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import alexnet
from alexnet.artifacts.checkpoint import load_weights
from alexnet.config import OptimConfig
from alexnet.data.pipeline import build_data
from alexnet.errors import ConfigError
from alexnet.training.finetune import freeze, whiten_conv1
from alexnet.training.fit import fit
from alexnet.training.optim import Schedule, build_optimizer
from tests.conftest import tiny_config


def test_freeze_features_or_a_depth():
    model = alexnet.create_model("alexnet_owt", num_classes=3, width=0.25)
    frozen = freeze(model, "features")
    assert frozen and all(n.startswith("features.") for n in frozen)
    assert all(p.requires_grad == (not n.startswith("features.")) for n, p in model.named_parameters())
    model = alexnet.create_model("alexnet_owt", num_classes=3, width=0.25)
    assert freeze(model, "6") == [
        *(f"features.{i}.{k}" for i in (0, 3, 6, 8, 10) for k in ("weight", "bias")),
        "classifier.1.weight",
        "classifier.1.bias",
    ]
    for bad in ("8", "0", "head", "-1"):
        with pytest.raises(ConfigError, match="model.freeze"):
            freeze(alexnet.create_model("alexnet_owt", num_classes=3, width=0.25), bad)


def test_pretrained_layers_learn_at_a_fraction_of_the_rate():
    model = alexnet.create_model("alexnet_owt", num_classes=3, width=0.25)
    head = {"classifier.6.weight", "classifier.6.bias"}
    scales = {n: 0.1 for n, _ in model.named_parameters() if n not in head}
    cfg = OptimConfig(lr=0.02, schedule="cosine")
    optimizer = build_optimizer(model, cfg, scales)
    Schedule(optimizer, cfg, epochs=2, steps_per_epoch=4).set(0, 2)
    by_param = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    params = dict(model.named_parameters())
    base = by_param[id(params["classifier.6.weight"])]
    assert 0 < base < 0.02  # the cosine schedule's value at step 2
    assert by_param[id(params["features.0.weight"])] == pytest.approx(0.1 * base)
    assert by_param[id(params["classifier.6.bias"])] == base
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(params)
    assert len(optimizer.param_groups) == 2  # bias_decay is on: one group per rate


def test_whitened_conv1_starts_from_the_training_images_and_freeze_keeps_it(tmp_path):
    cfg = tiny_config(tmp_path / "run", "model.whiten_conv1=true", 'model.freeze="1"', "train.epochs=1")
    fit(cfg)
    trained, _ = load_weights(tmp_path / "run" / "best.safetensors")
    data = build_data(cfg.data, 32, torch.device("cpu"), cfg.train.seed)
    expected = alexnet.create_model("alexnet_small", num_classes=10, width=0.25)
    whiten_conv1(expected, data)
    conv1 = expected.features[0]
    assert torch.equal(trained["features.0.weight"], conv1.weight)  # frozen: as whitened, from the same images
    before = alexnet.create_model("alexnet_small", num_classes=10, width=0.25).features[0].weight
    assert not torch.allclose(conv1.weight, before)
    # A second process of a data-parallel run, with its own shard of the images, starts from the same conv1.
    shard = build_data(cfg.data, 32, torch.device("cpu"), cfg.train.seed, rank=1, world=2)
    second = alexnet.create_model("alexnet_small", num_classes=10, width=0.25)
    whiten_conv1(second, shard)
    assert torch.equal(second.features[0].weight, conv1.weight)
    # From a different start: other training images would whiten differently.
    other = alexnet.create_model("alexnet_small", num_classes=10, width=0.25)
    whiten_conv1(other, data, images=64)
    assert not torch.allclose(other.features[0].weight, conv1.weight)


def test_colour_weights_on_a_grey_data_set_name_the_weights(tmp_path, capsys):
    """Fine-tuning 3-channel weights on Fashion-MNIST (1 channel) said `data.mean has 3 values for 1-channel
    images; give 1 or 1`: a setting the user never gave (the weights' mean), and advice that cannot help. It names
    the weights and the channels now, as `transfer` does; a user's own data.mean says `give 1`."""
    from alexnet.cli import main
    from tests.conftest import make_weights

    fixture = Path(__file__).parent.parent / "fixtures" / "fashion-mnist"
    weights = make_weights(tmp_path / "colour.safetensors")
    base = ["train", "--dataset", "fashion-mnist", "--data-dir", str(fixture), "--epochs", "1"]
    assert main([*base, "--weights", str(weights), "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "take 3-channel images and this data set has 1" in err, err
    assert main([*base, "--set", "data.mean=[0.1, 0.2, 0.3]", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert err.rstrip().endswith("data.mean has 3 values for 1-channel images; give 1"), err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
