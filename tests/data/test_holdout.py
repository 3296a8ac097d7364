"""data.val_split: a validation split carved from the training split (issue 22). Disjoint, stratified, seeded,
recorded and checked on resume; selection reads it and the test split is evaluated once, after the last epoch."""

from __future__ import annotations

import json
import math

import pytest
import torch

from alexnet.artifacts.checkpoint import load_checkpoint
from alexnet.data.holdout import holdout_count, holdout_indices, split_indices
from alexnet.errors import ConfigError, IncompatibleCheckpointError
from alexnet.inference.evaluate import evaluate_checkpoint
from alexnet.training.fit import fit

from ..conftest import tiny_config


def _labels(counts):
    return torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])[torch.randperm(sum(counts))]


def test_the_split_is_disjoint_stratified_and_seeded():
    torch.manual_seed(0)
    labels = _labels([500, 300, 200])  # unbalanced: 50%, 30%, 20%
    held = holdout_indices(labels, 0.1, seed=0)
    train = split_indices(len(labels), held)
    assert len(held) == 100 and len(train) == 900
    assert set(held.tolist()).isdisjoint(train.tolist()) and len(set(held.tolist()) | set(train.tolist())) == 1000
    assert torch.bincount(labels[held]).tolist() == [50, 30, 20]  # each class's share
    assert torch.equal(held, holdout_indices(labels, 0.1, seed=0))  # deterministic
    assert not torch.equal(held, holdout_indices(labels, 0.1, seed=1))
    counted = holdout_indices(labels, 7, seed=0)  # a count: largest remainders settle the rounding
    assert len(counted) == 7 and torch.bincount(labels[counted], minlength=3).tolist() == [4, 2, 1]


def test_bad_sizes_are_refused():
    assert holdout_count(5000, 50000) == 5000 and holdout_count(0.2, 60000) == 12000
    with pytest.raises(ConfigError, match="whole number"):
        holdout_count(12.5, 100)
    with pytest.raises(ConfigError, match="every one"):
        holdout_count(100, 100)
    with pytest.raises(ConfigError, match="every one"):  # a fraction that rounds to all of them
        holdout_count(0.9999, 1000)
    assert holdout_count(0.998, 1000) == 998


@pytest.fixture(scope="module")
def held_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("holdout") / "run"
    result = fit(tiny_config(out, "data.val_split=0.2", "train.epochs=2", "train.limit_train_batches=6"))
    return out, result


def test_selection_reads_the_held_out_split_and_the_test_split_is_evaluated_once(held_run):
    out, result = held_run
    rows = result.history
    assert "test_acc1" not in rows[0] and not math.isnan(rows[-1]["test_acc1"])  # once, after the last epoch
    assert (out / "metrics.csv").read_text().splitlines()[1].endswith(",nan,nan,nan")
    header = (out / "metrics.csv").read_text().splitlines()[0].split(",")
    assert header[-3:] == ["test_loss", "test_acc1", "test_acc5"]
    record = json.loads((out / "held_out.json").read_text())
    assert len(record["indices"]) == round(0.2 * 1024)  # the fake data set's 1,024 training images
    kwargs = {"device": "cpu", "precision": "fp32", "progress": False}
    # What metrics.csv calls validation is the held-out images, and what it calls test is the test split: the
    # same weights evaluated on each by `alexnet eval --split` give the run's own figures.
    last = load_checkpoint(out / "last.pt")
    assert last["epoch"] == 2
    val = evaluate_checkpoint(out / "last.pt", split="val", **kwargs)
    test = evaluate_checkpoint(out / "last.pt", split="test", **kwargs)
    assert val.images == len(record["indices"]) and test.images == 256
    assert val.acc1 == pytest.approx(rows[-1]["val_acc1"], abs=1e-3)
    assert test.acc1 == pytest.approx(rows[-1]["test_acc1"], abs=1e-3)
    assert val.loss == pytest.approx(rows[-1]["val_loss"], abs=1e-4)
    best = load_checkpoint(out / "best.pt")
    assert best["best_acc1"] == pytest.approx(
        max(r["val_acc1"] for r in rows), abs=1e-3
    )  # chosen by the held-out column


def test_a_resume_keeps_the_held_out_images(held_run, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(held_run[0], out)
    record = json.loads((out / "held_out.json").read_text())
    original = (out / "held_out.json").read_text()
    record["indices"] = [*record["indices"][1:], 0]
    (out / "held_out.json").write_text(json.dumps(record))
    with pytest.raises(IncompatibleCheckpointError, match="other held-out images"):
        fit(tiny_config(out, "data.val_split=0.2", "train.epochs=3", 'train.resume="auto"'))
    with pytest.raises(IncompatibleCheckpointError, match="differ from the run's record"):
        evaluate_checkpoint(out / "last.pt", split="val", device="cpu", progress=False)
    (out / "held_out.json").write_text(original)
    with pytest.raises(IncompatibleCheckpointError, match="data.val_split"):  # pinned: another split is another run
        fit(tiny_config(out, "data.val_split=0.1", "train.epochs=3", 'train.resume="auto"'))
