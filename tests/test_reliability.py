"""Process-level reliability (shared/reference/reliability-tests.md): SIGTERM mid-epoch (T10), kill -9 during a
checkpoint write (T5), the same seed giving the same weights in two fresh processes with workers (T27), and a
data-loading worker killed while decoding (T19)."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from alexnet.artifacts.checkpoint import load_checkpoint, remove_stale_temporaries, save_checkpoint
from tests.helpers import child_signals, train_command

TRAIN = [
    sys.executable,
    *train_command("fashion-mnist", "--set", "model.overrides.input_size=32", "--lr", "0.02"),
]


def _metrics_rows(run):
    """metrics.csv rows without their timings."""
    lines = (run / "metrics.csv").read_text().splitlines()
    return [line.split(",")[:7] for line in lines]


SIGNAL_ARGS = ["--epochs", "3", "--set", "data.pad=2"]


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """The uninterrupted reference run of the signal tests, trained once, in this process (the same code and
    arithmetic as the subprocesses: CPU, fp32, the default two threads)."""
    from alexnet.cli import main

    out = tmp_path_factory.mktemp("straight") / "run"
    assert main([*TRAIN[3:], "--out", str(out), *SIGNAL_ARGS]) == 0
    return out


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])  # a scheduler's preemption, or Ctrl-C
def test_signal_mid_epoch_checkpoints_and_resumes_bitwise(tmp_path, signum, straight_run):
    args, straight = SIGNAL_ARGS, straight_run
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [*TRAIN, "--out", str(run), *args], stderr=subprocess.PIPE, text=True, preexec_fn=child_signals()
    )
    deadline = time.time() + 120
    while not (run / "last.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)  # the end of epoch 1: signal during epoch 2
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum, err
    assert f"stopped by {signal.Signals(signum).name}" in err and "--resume auto" in err
    state = load_checkpoint(run / "last.pt")
    assert state["epoch"] == 1 and 0 < state["step"] <= 32
    from alexnet.cli import main

    # Resumed in this process, like the straight run: the same code and arithmetic, without an interpreter start.
    assert main([*TRAIN[3:], "--out", str(run), *args, "--resume", "auto"]) == 0
    a, b = load_checkpoint(straight / "last.pt"), load_checkpoint(run / "last.pt")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    # The interrupted epoch's row covers all of it (its running sums were checkpointed), not only the resumed part.
    assert _metrics_rows(run) == _metrics_rows(straight)
    for sidecar in run.glob("*.sha256"):
        assert subprocess.run(["sha256sum", "-c", "--quiet", sidecar.name], cwd=run).returncode == 0


@pytest.mark.slow
def test_signals_the_caller_ignores_stay_ignored(tmp_path, straight_run):
    """A script's background job (`alexnet train ... &`) ignores SIGINT, so that Ctrl-C in the script's terminal
    leaves it running; `trap '' TERM` ignores SIGTERM. Training's handlers replaced SIG_IGN and stopped the run."""
    run = tmp_path / "run"
    ignoring = (signal.SIGINT, signal.SIGTERM)
    proc = subprocess.Popen(
        [*TRAIN, "--out", str(run), *SIGNAL_ARGS],
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=child_signals(ignoring),
    )
    deadline = time.time() + 120
    while not (run / "last.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    for signum in ignoring:
        proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "stopped by" not in err, err
    assert _metrics_rows(run) == _metrics_rows(straight_run)  # the whole run, as if no signal had come


def test_same_seed_same_weights_in_two_processes_with_workers(tmp_path, image_folder):
    outs = []
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        out = tmp_path / name
        cmd = [
            *TRAIN,
            "--out",
            str(out),
            "--epochs",
            "1",
            "--dataset",
            "folder",
            "--data-dir",
            str(image_folder),
            "-j",
            "2",
            "-b",
            "4",
            "--seed",
            str(seed),
            "--set",
            "data.pad=2",
            "--set",
            "data.in_memory_gb=0",
        ]  # streamed by workers
        if name == "c":  # the other seed only needs to differ: trained in this process, no interpreter start-up
            from alexnet.cli import main

            assert main(cmd[3:]) == 0
        else:
            result = subprocess.run(cmd, capture_output=True, text=True)
            assert result.returncode == 0, result.stderr
        outs.append(load_checkpoint(out / "last.pt")["model"])  # best.safetensors needs val accuracy above 0%
    a, b, c = outs
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def _save_forever(path: str, ready) -> None:
    """The child of the kill -9 test: announce each write (its number), then save, forever."""
    i, took = 0, None
    while True:
        i += 1
        # numpy fills it: torch's OpenMP pool does not survive fork (a parallel op would hang the child)
        state = {"model": {"w": torch.from_numpy(np.full(1_000_000, i, np.float32))}, "config": {}, "i": i}
        ready.send((i, took))  # and how long the previous write took
        began = time.perf_counter()
        save_checkpoint(state, path)
        took = time.perf_counter() - began


@pytest.mark.slow
def test_kill_9_during_save_leaves_a_whole_checkpoint(tmp_path):
    """T5: 50 SIGKILLs at random points inside checkpoint writes (not before the first one)."""
    import multiprocessing
    import random

    path, rng, mid_write = tmp_path / "last.pt", random.Random(0), 0
    save_s = 0.05  # until the writers have measured it
    ctx = multiprocessing.get_context("fork")  # the child inherits torch already imported: fast to start
    for _ in range(50):
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_save_forever, args=(str(path), child))
        proc.start()
        target = 1 if path.exists() else 2  # a write that replaces an existing file (the first one must finish)
        while True:
            assert parent.poll(60), "the writer stopped announcing writes"
            i, took = parent.recv()
            save_s = took or save_s
            if i >= target:
                break
        time.sleep(rng.uniform(0, save_s))  # land anywhere inside the announced write
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        mid_write += any(tmp_path.glob(".*.tmp"))  # killed before the rename: the temporary is still there
        state = load_checkpoint(path)  # always the old or the new file, never a mix, matching its recorded digest
        assert torch.all(state["model"]["w"] == state["i"])
        remove_stale_temporaries(tmp_path)  # what the next start does
        assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "last.pt.sha256"]
        assert subprocess.run(["sha256sum", "-c", "--quiet", "last.pt.sha256"], cwd=tmp_path).returncode == 0
    assert mid_write >= 10, f"only {mid_write} of 50 kills landed inside a write"


POISONED = textwrap.dedent("""
    import os, signal, sys
    import alexnet.data.folder as folder
    real = folder.decode_stored
    def decode(path, *args, **kwargs):
        if os.path.basename(path) == "poison.png":  # a decoder crash: the worker dies without a Python error
            os.kill(os.getpid(), signal.SIGKILL)
        return real(path, *args, **kwargs)
    folder.decode_stored = decode
    from alexnet.cli import main
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.parametrize("in_memory_gb", [0, 4])  # streamed during training, or decoded up front
def test_worker_killed_while_decoding_is_reported_by_file(tmp_path, image_folder, in_memory_gb):
    poison = image_folder / "train" / "dog" / "poison.png"
    (image_folder / "train" / "dog" / "0.png").rename(poison)
    cmd = [
        sys.executable,
        "-c",
        POISONED,
        *TRAIN[3:],
        "--out",
        str(tmp_path / "run"),
        "--epochs",
        "1",
        "--dataset",
        "folder",
        "--data-dir",
        str(image_folder),
        "-j",
        "2",
        "-b",
        "4",
        "--set",
        f"data.in_memory_gb={in_memory_gb}",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)  # no hang
    assert result.returncode != 0
    assert "DataLoader worker" in result.stderr and f"while decoding {poison}" in result.stderr, result.stderr
