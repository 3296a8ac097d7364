"""The moving average of the weights: timm's ModelEmaV3 arithmetic, validated and saved beside the live weights, and
continued bitwise by a resumed run."""

from __future__ import annotations

import csv

import pytest
import torch
from torch import nn

from alexnet.artifacts.checkpoint import load_checkpoint, load_weights
from alexnet.artifacts.loader import load_trained
from alexnet.training.ema import WeightEma
from alexnet.training.fit import fit
from tests.conftest import tiny_config


def test_the_average_follows_the_formula_for_parameters_and_buffers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    ema = WeightEma(model, decay=0.9)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model[0].weight.add_(1.0)
        model[1].running_mean.fill_(2.0)
        model[1].num_batches_tracked.fill_(7)
    ema.update(model)
    got = ema.module.state_dict()
    assert torch.allclose(got["0.weight"], 0.9 * start["0.weight"] + 0.1 * model[0].weight)
    assert torch.allclose(got["1.running_mean"], 0.9 * start["1.running_mean"] + 0.1 * 2.0)  # buffers too (V3)
    assert got["1.num_batches_tracked"].item() == 7  # integers are copied, not averaged
    assert ema.step == 1 and not any(p.requires_grad for p in ema.module.parameters())


def test_warmup_grows_the_decay_to_its_cap():
    ema = WeightEma(nn.Linear(2, 2), decay=0.999, warmup=True)
    decays = [ema.decay_at(s) for s in (0, 1, 10, 1000, 10**6)]
    assert decays[0] == 0.0  # the first update takes the live weights
    assert decays[1] == pytest.approx(1 - 2 ** (-2 / 3)) and decays[2] == pytest.approx(1 - 11 ** (-2 / 3))
    assert decays == sorted(decays) and decays[-1] == 0.999  # capped
    assert WeightEma(nn.Linear(2, 2), decay=0.99).decay_at(0) == 0.99  # no warm-up: the decay from the start


def test_a_run_validates_saves_and_resumes_the_average_bitwise(tmp_path):
    ema = ["train.ema_decay=0.9", "train.ema_warmup=true"]
    straight = fit(tiny_config(tmp_path / "a", "train.epochs=2", *ema))
    with open(tmp_path / "a" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert all(float(r["ema_val_acc1"]) >= 0 for r in rows) and len(rows) == 2
    # Another set of weights: the fake data is easy enough that by epoch 2 both losses can round to the same 5e-05
    # (an AVX2 CPU's fp32 did), so any epoch's difference counts; evaluating the live weights twice gives none.
    assert any(h["ema_val_loss"] != h["val_loss"] for h in straight.history), straight.history
    averaged = load_trained(tmp_path / "a" / "ema.safetensors")  # a model like any other
    assert averaged.meta.provenance["ema"]["decay"] == 0.9 and averaged.meta.metrics["epoch"] == 2
    live, _ = load_weights(tmp_path / "a" / "best.safetensors")
    mean, _ = load_weights(tmp_path / "a" / "ema.safetensors")
    assert any(not torch.equal(live[k], mean[k]) for k in live)
    # One epoch, stop, resume the second: the average continues exactly.
    fit(tiny_config(tmp_path / "b", "train.epochs=1", *ema))
    fit(tiny_config(tmp_path / "b", "train.epochs=2", 'train.resume="auto"', *ema))
    a, b = load_checkpoint(tmp_path / "a" / "last.pt")["ema"], load_checkpoint(tmp_path / "b" / "last.pt")["ema"]
    assert a["step"] == b["step"] > 0
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    resumed, _ = load_weights(tmp_path / "b" / "ema.safetensors")
    assert all(torch.equal(mean[k], resumed[k]) for k in mean)


def test_without_ema_nothing_changes(tmp_path):
    fit(tiny_config(tmp_path / "run", "train.epochs=1"))
    assert not (tmp_path / "run" / "ema.safetensors").exists()
    assert "ema" not in load_checkpoint(tmp_path / "run" / "last.pt")
    assert "ema_val_acc1" not in (tmp_path / "run" / "metrics.csv").read_text()
