"""The paper's experiments: Figure 1's two trainings on fake data (the real run is in the README)."""

import json

import pytest

from alexnet.cli import main
from alexnet.experiments.paper import FIG1_LRS, epochs_to, figure1
from alexnet.training.fit import fit
from alexnet.training.rundir import RunDirectoryError
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


def test_a_run_resumed_after_stopping_at_its_target_trains_no_further(tmp_path):
    cfg = ["train.epochs=3", "train.stop_at_train_acc1=0"]
    fit(tiny_config(tmp_path / "run", *cfg))
    before = (tmp_path / "run" / "last.pt").read_bytes()
    result = fit(tiny_config(tmp_path / "run", *cfg, 'train.resume="auto"'))
    assert [row["epoch"] for row in result.history] == [1]
    assert (tmp_path / "run" / "last.pt").read_bytes() == before
    # Given a higher target it is not finished: it goes on from its checkpoint.
    result = fit(tiny_config(tmp_path / "run", "train.epochs=2", "train.stop_at_train_acc1=100", 'train.resume="auto"'))
    assert [row["epoch"] for row in result.history] == [1, 2]


def _fig1_cli(out, *more):
    fake = [a for o in FAST for a in ("--set", o)]
    return main(["paper", "fig1", "--out", str(out), "--sweep", "0.01", "--target", "60", *fake, *more])


def test_an_interrupted_figure1_sweep_resumes_where_it_stopped(tmp_path, capsys):
    # ReLU reaches 60% training error at epoch 2 at lr 0.01 on the fixture data, tanh at epoch 4 (the test above).
    out = tmp_path / "fig1"
    assert _fig1_cli(out, "--max-epochs", "3") == 0  # stopped short of tanh's epoch 4, as an interruption would
    relu = (out / "relu-lr0.01" / "last.pt").read_bytes()
    first = json.loads((out / "fig1.json").read_text())
    assert first["speedup"] is None and len(first["best"]["tanh"]["train_error"]) == 3
    with pytest.raises(RunDirectoryError, match="--resume auto"):  # the advice names a flag the command has
        figure1(out, FAST, sweep=[0.01], target=60.0, max_epochs=4)
    assert _fig1_cli(out, "--max-epochs", "4", "--resume", "auto") == 0
    assert "ReLU (lr 0.01) 2 epochs, tanh (lr 0.01) 4 epochs: ReLU 2.0x faster" in capsys.readouterr().out
    assert (out / "relu-lr0.01" / "last.pt").read_bytes() == relu  # finished at its target: read back, not trained
    resumed = json.loads((out / "fig1.json").read_text())
    # tanh went on from its third epoch, as the same sweep run whole does
    whole = figure1(tmp_path / "whole", FAST, sweep=[0.01], target=60.0, max_epochs=4)
    assert resumed["best"]["tanh"]["train_error"][:3] == first["best"]["tanh"]["train_error"]
    assert resumed["best"]["tanh"]["train_error"] == whole.best["tanh"].train_error
    assert resumed["best"]["relu"]["train_error"] == whole.best["relu"].train_error
    # A recipe change the runs were not trained with is refused, naming the flag this command has to allow it.
    capsys.readouterr()
    changed = ["--max-epochs", "4", "--resume", "auto", "--set", "optim.momentum=0.5"]
    assert _fig1_cli(out, *changed) == 2 and "--allow-changes" in capsys.readouterr().err
    assert _fig1_cli(out, *changed, "--allow-changes") == 0  # finished runs: read back


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
