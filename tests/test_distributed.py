"""Two processes under torchrun on the CPU (gloo): sharding, exact evaluation, resume (reliability T20-T22)."""

import csv
import subprocess
import sys

import pytest
import torch

from alexnet.checkpoint import load_checkpoint
from alexnet.data.batch import epoch_order
from alexnet.evaluation import evaluate_checkpoint

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "alexnet.cli",
            "train", "--recipe", "fashion-mnist", "--dataset", "fake", "--precision", "fp32", "--no-progress",
            "-b", "32", "--set", "model.overrides.width=0.25", "--set", "model.overrides.input_size=32",
            "--set", "data.pad=2", "--set", 'optim.schedule="constant"', "--lr", "0.02"]  # fmt: skip


def test_epoch_order_shards():
    train = [epoch_order(103, 5, True, 0, r, 4, equal=True) for r in range(4)]
    assert all(len(t) == 25 for t in train)
    assert len(set(torch.cat(train).tolist())) == 100  # disjoint
    val = [epoch_order(103, 0, False, 0, r, 4) for r in range(4)]
    assert sorted(torch.cat(val).tolist()) == list(range(103))  # each image exactly once, no padding
    assert not torch.equal(epoch_order(50, 0, True, 0), epoch_order(50, 1, True, 0))  # reshuffled each epoch


def _run(*args):
    result = subprocess.run([*TORCHRUN, *args], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp") / "run"
    _run("--epochs", "2", "--out", str(out))
    return out


def test_two_processes_train_and_evaluate_exactly(two_process_run):
    with open(two_process_run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2"]  # one writer
    assert float(rows[-1]["val_acc1"]) > 50
    # The same weights evaluated in one process: the same accuracy, so no image was counted twice or missed.
    single = evaluate_checkpoint(two_process_run / "last.pt", precision="fp32", progress=False)
    assert single["images"] == 256
    assert single["acc1"] == pytest.approx(float(rows[-1]["val_acc1"]), abs=1e-3)
    assert single["loss"] == pytest.approx(float(rows[-1]["val_loss"]), abs=1e-4)
    state = load_checkpoint(two_process_run / "last.pt")
    assert len(state["rng_ranks"]) == 2 and not torch.equal(
        state["rng_ranks"][0]["torch"], state["rng_ranks"][1]["torch"]
    )


def test_two_process_resume_is_bitwise(two_process_run, tmp_path):
    # A constant learning rate, so stopping after epoch 1 of a 1-epoch run equals epoch 1 of 2.
    out = tmp_path / "resumed"
    _run("--epochs", "1", "--out", str(out))
    _run("--epochs", "2", "--out", str(out), "--resume", "auto")
    a, b = load_checkpoint(two_process_run / "last.pt"), load_checkpoint(out / "last.pt")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
