"""The paper's experiments: Figure 1's two trainings on fake data (the real run is in the README)."""

import json

from alexnet.cli import main
from alexnet.experiments.paper import FIG1_LRS, epochs_to, figure1
from alexnet.training.fit import fit
from tests.conftest import tiny_config

FAST = [
    'data.dataset="fake"',
    'train.precision="fp32"',
    "train.progress=false",
    "train.limit_train_batches=4",
    "train.limit_val_batches=1",
]


def test_epochs_to_the_target():
    assert epochs_to([60.0, 30.0, 25.0, 20.0], 25.0) == 3
    assert epochs_to([60.0, 30.0], 25.0) is None


def test_training_stops_once_the_training_accuracy_is_reached(tmp_path):
    result = fit(tiny_config(tmp_path / "run", "train.epochs=3", "train.stop_at_train_acc1=0"))
    assert [row["epoch"] for row in result.history] == [1]


def test_figure1_trains_both_units_and_writes_the_figure(tmp_path):
    # On the fixture data at lr 0.01, ReLU is at 44.7% training error after epoch 2; tanh only reaches 54.7% at
    # epoch 4: a 60% target separates them (a target both meet at epoch 1 would make any code pass).
    result = figure1(tmp_path / "fig1", FAST, sweep=[0.01, 1e6], target=60.0, max_epochs=4)
    assert [(r.unit, r.lr) for r in result.runs] == [
        ("relu", 0.01),
        ("relu", 1e6),
        ("tanh", 0.01),
        ("tanh", 1e6),
    ]
    relu_diverged = next(r for r in result.runs if r.unit == "relu" and r.lr == 1e6)
    assert relu_diverged.diverged and relu_diverged.epochs is None  # a sweep survives a diverging rate
    epochs = {(r.unit, r.lr): r.epochs for r in result.runs}
    assert epochs[("relu", 0.01)] == 2 and epochs[("tanh", 0.01)] == 4  # the units separate at the same rate
    assert result.best["relu"].lr == 0.01 and result.best["relu"].epochs == 2
    assert result.speedup == result.best["tanh"].epochs / 2
    assert json.loads((tmp_path / "fig1" / "fig1.json").read_text())["best"]["tanh"]["unit"] == "tanh"
    assert (tmp_path / "fig1" / "fig1.png").stat().st_size > 5000
    assert (tmp_path / "fig1" / "tanh-lr0.01" / "best.safetensors").exists()


def test_paper_command(tmp_path, capsys):
    args = [
        "paper",
        "fig1",
        "--out",
        str(tmp_path),
        "--dataset",
        "fake",
        "--precision",
        "fp32",
        "--no-progress",
        "--max-epochs",
        "1",
        "--target",
        "95",
        "--set",
        "train.limit_train_batches=4",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"relu  lr {FIG1_LRS['relu']:<8g}" in out and f"tanh  lr {FIG1_LRS['tanh']:<8g}" in out
    assert "faster; the paper: about 6x" in out
