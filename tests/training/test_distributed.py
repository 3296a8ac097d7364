"""Two processes under torchrun on the CPU (gloo): sharding, exact evaluation, resume (reliability T20-T22)."""

import csv
import os
import subprocess
import sys
import time

import pytest
import torch

from alexnet.data.batch import epoch_order
from alexnet.inference.evaluation import evaluate_checkpoint
from alexnet.training.checkpoint import load_checkpoint

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


CHAOS = """
import os, signal, sys
import alexnet.training.fit as fit_module

real = fit_module.train_one_epoch

def train_one_epoch(*args, **kwargs):
    epoch = args[6]
    if os.environ["RANK"] == "1" and epoch == 1 and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0":
        if os.environ["CHAOS"] == "kill":
            os.kill(os.getpid(), signal.SIGKILL)  # a lost machine: no Python error, no cleanup
        raise RuntimeError("rank 1 fails at the start of epoch 2")
    return real(*args, **kwargs)

fit_module.train_one_epoch = train_one_epoch
from alexnet.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _chaos_run(tmp_path, chaos: str, restarts: int, out):
    script = tmp_path / "chaos.py"
    script.write_text(CHAOS)
    launcher = [*TORCHRUN[:5], f"--max-restarts={restarts}", str(script), *TORCHRUN[7:]]
    # The agent's rendezvous store is shared with the workers by default, and a restarted worker can then read the
    # previous attempt's addresses (gloo: "connectFullMesh failed ... Connection refused"; pytorch/pytorch#135712).
    env = {**os.environ, "CHAOS": chaos, "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
    args = ["--epochs", "2", "--out", str(out), "--resume", "auto"]
    result = subprocess.run([*launcher, *args], capture_output=True, text=True, timeout=300, env=env)
    orphans = subprocess.run(["pgrep", "-f", str(out)], capture_output=True, text=True).stdout.split()
    assert not orphans, f"processes left behind: {orphans}"
    return result


def test_elastic_restart_after_a_lost_rank_continues_bitwise(two_process_run, tmp_path):
    """T20: rank 1 is SIGKILLed in epoch 2; torchrun restarts both ranks, which resume from epoch 1's checkpoint
    and finish with the weights of the uninterrupted run (constant learning rate, so resume is exact)."""
    out = tmp_path / "elastic"
    result = _chaos_run(tmp_path, "kill", 2, out)  # one restart needed; a second spare for the launcher
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed from" in result.stderr
    a, b = load_checkpoint(two_process_run / "last.pt"), load_checkpoint(out / "last.pt")
    assert b["epoch"] == 2
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key


def test_one_failing_rank_stops_every_rank(tmp_path):
    """T21: rank 1 raises; the job exits non-zero soon, with no process left waiting on the dead rank."""
    out = tmp_path / "diverged"
    start = time.monotonic()
    result = _chaos_run(tmp_path, "raise", 0, out)
    assert result.returncode != 0 and "rank 1 fails" in result.stderr
    assert time.monotonic() - start < 120
