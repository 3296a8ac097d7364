"""Fine-tuning pieces: freezing by name or depth, and the lower learning rate of pretrained layers."""

from __future__ import annotations

import pytest

import alexnet
from alexnet.config import OptimConfig
from alexnet.errors import ConfigError
from alexnet.training.finetune import freeze
from alexnet.training.optim import Schedule, build_optimizer


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
