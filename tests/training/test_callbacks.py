"""fit's events for callbacks: when each fires and with what, a callback that stops a run, and the TensorBoard
logger's files read back with TensorBoard's own reader."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from alexnet.cli import main
from alexnet.training.callbacks import Callback
from alexnet.training.fit import fit
from tests.conftest import tiny_config


class Recorder(Callback):
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def on_run_start(self, run):
        self.events.append(("start", run.start_epoch))

    def on_train_epoch_end(self, run, epoch, train, control):
        self.events.append(("train", epoch, round(train["acc1"], 3)))

    def on_epoch_end(self, run, epoch, row):
        self.events.append(("epoch", epoch, dict(row)))

    def on_checkpoint(self, run, path):
        self.events.append(("checkpoint", path.name))

    def on_run_end(self, run, result):
        self.events.append(("end", len(result.history)))


def test_events_fire_in_order_with_the_runs_figures(tmp_path):
    recorder = Recorder()
    result = fit(tiny_config(tmp_path / "run", "train.epochs=2"), callbacks=[recorder])
    kinds = [e[0] for e in recorder.events]
    assert kinds[0] == "start" and kinds[-1] == "end" and recorder.events[-1] == ("end", 2)
    assert [e[1] for e in recorder.events if e[0] == "train"] == [0, 1]
    rows = [e[2] for e in recorder.events if e[0] == "epoch"]
    with open(tmp_path / "run" / "metrics.csv") as f:
        written = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == [1, 2] and rows == result.history
    assert [float(r["val_acc1"]) for r in written] == [r["val_acc1"] for r in rows]  # what the CSV holds
    # Each epoch trains before it is validated, and its checkpoints follow its row.
    assert kinds.index("train") < kinds.index("epoch") < kinds.index("checkpoint")
    saved = [e[1] for e in recorder.events if e[0] == "checkpoint"]
    assert saved.count("last.pt") == 2 and "best.pt" in saved and "best.safetensors" in saved


class StopAfterFirst(Callback):
    def on_train_epoch_end(self, run, epoch, train, control):
        control.stop, control.reason = True, "enough"


def test_a_callback_stops_the_run_after_a_validated_epoch(tmp_path, caplog):
    out = tmp_path / "run"
    with caplog.at_level("INFO", logger="alexnet"):
        result = fit(tiny_config(out, "train.epochs=3"), callbacks=[StopAfterFirst()])
    assert len(result.history) == 1 and result.final is not None and result.final.finite  # validated, then stopped
    assert (out / "last.pt").is_file() and "enough: stopping" in caplog.text


def test_stop_at_train_acc1_is_the_same_mechanism(tmp_path):
    # train.stop_at_train_acc1=0 stops after the first epoch through the built-in StopAtTrainAccuracy callback.
    recorder = Recorder()
    result = fit(tiny_config(tmp_path / "run", "train.epochs=3", "train.stop_at_train_acc1=0"), callbacks=[recorder])
    assert len(result.history) == 1 and recorder.events[-1] == ("end", 1)


@pytest.mark.slow
def test_tensorboard_files_hold_the_metrics_images_and_config(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    args = ["train", "--dataset", "fake", "--epochs", "2", "--out", str(out), "--logger", "csv,tensorboard"]
    args += ["--no-progress", "-b", "32", "--set", "model.overrides.width=0.25", "--set", "data.eval_batch_size=64"]
    assert main(args) == 0
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    events.Reload()
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    tags = events.Tags()
    assert {"val/val_acc1", "train/train_loss", "run/lr", "run/img_s"} <= set(tags["scalars"])
    val = events.Scalars("val/val_acc1")
    assert [s.step for s in val] == [1, 2]
    assert [round(s.value, 3) for s in val] == [pytest.approx(float(r["val_acc1"]), abs=1e-3) for r in rows]
    assert {"conv1_filters", "confusion"} <= set(tags["images"])
    assert any("config" in t for t in tags["tensors"])  # add_text stores text as a tensor summary


def test_keep_best_keeps_the_top_k_epochs_by_the_monitored_validation_figure(tmp_path):
    from alexnet.artifacts.checkpoint import load_checkpoint

    out = tmp_path / "run"
    result = fit(tiny_config(out, "train.epochs=4", "train.keep_best=2", 'train.monitor="val_loss"'))
    losses = {int(r["epoch"]): r["val_loss"] for r in result.history}
    best_two = sorted(losses, key=lambda e: (losses[e], e))[:2]
    kept = sorted(int(p.stem.removeprefix("best-epoch")) for p in out.glob("best-epoch*.pt"))
    assert kept == sorted(best_two)
    assert not [p for p in out.glob("best-epoch*.pt.sha256") if int(p.name[10:-10]) not in best_two]
    for epoch in kept:  # each is that epoch's full, resumable state
        assert load_checkpoint(out / f"best-epoch{epoch}.pt")["epoch"] == epoch
    # best.pt follows the monitor too: the lowest validation loss, not the highest accuracy.
    assert load_checkpoint(out / "best.pt")["epoch"] == min(losses, key=lambda e: (losses[e], e))


def test_the_monitor_cannot_be_the_test_split(tmp_path):
    from alexnet.config import load_config
    from alexnet.errors import ConfigError

    with pytest.raises(ConfigError, match="train.monitor"):
        load_config(None, ['train.monitor="test_acc1"'])


@pytest.mark.parametrize(
    ("monitor", "figures", "patience", "stops_at"),
    [
        ("val_acc1", [50, 60, 59, 60], 2, 2),  # 60 again is no improvement: a tie keeps the first
        ("val_acc1", [50, 60, 59, 60], 3, None),
        ("val_acc1", [50, 60, 61, 60], 2, None),
        ("val_loss", [1.0, 0.9, 0.95, 0.91], 2, 2),  # a loss improves downwards
        ("val_acc1", [50, float("nan"), 49, float("nan"), 48], 2, 1),  # epochs not validated do not count
        ("val_acc1", [50, float("nan"), 49, float("nan")], 2, None),
    ],
)
def test_patience_counts_validations_since_the_best(monitor, figures, patience, stops_at):
    from alexnet.training.fit import _out_of_patience

    cfg = tiny_config(Path("run"), f"train.early_stop_patience={patience}", f'train.monitor="{monitor}"')
    history = [{"epoch": e + 1, monitor: f} for e, f in enumerate(figures)]
    why = _out_of_patience(cfg, history)
    assert (why is None) == (stops_at is None), why
    if stops_at is not None:
        assert f"{monitor} no better than epoch {stops_at}'s for {patience} validations" in why


NO_BN, HELD_OUT = 'model.overrides.norm="none"', "data.val_split=0.25"


def test_early_stopping_stops_tests_once_and_stays_stopped_on_resume(tmp_path, caplog):
    """Lightning's EarlyStopping: no better held-out figure in ``train.early_stop_patience`` validations ends the
    run after the one that ran out, tested then (the test split once, as after a last epoch); resuming the run
    trains nothing more. A learning rate of 1e-12 leaves fp32 weights as they were (a step under half their last
    bit), and without batch norm's running statistics every epoch's held-out figures are the first's."""
    out, still = tmp_path / "run", ("optim.lr=1e-12", "train.epochs=6", "train.early_stop_patience=2", NO_BN, HELD_OUT)
    with caplog.at_level("INFO", logger="alexnet"):
        result = fit(tiny_config(out, *still))
    assert [r["epoch"] for r in result.history] == [1, 2, 3] and result.test is not None
    assert "test_acc1" in result.history[-1] and "test_acc1" not in result.history[1]
    assert "val_acc1 no better than epoch 1's for 2 validations (early_stop_patience): stopping" in caplog.text
    again = fit(tiny_config(out, *still, 'train.resume="auto"'))
    assert [r["epoch"] for r in again.history] == [1, 2, 3]
