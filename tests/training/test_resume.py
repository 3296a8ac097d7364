"""Resume guards (T12 and the pinned recipe), the checkpoint allow-list (T3), disk full through the CLI (T8), a real
SIGKILL mid-epoch resumed from the periodic checkpoint (T11), labels outside [0, C) (T17), digest sidecars."""

import ast
import contextlib
import errno
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import alexnet
from alexnet.artifacts.checkpoint import load_checkpoint, remove_stale_temporaries, save_checkpoint
from alexnet.cli import main
from alexnet.errors import CorruptCheckpointError, IncompatibleCheckpointError
from alexnet.training.fit import fit
from tests.conftest import make_folder, tiny_config
from tests.helpers import train_command


@pytest.mark.parametrize(
    ("change", "named"),
    [("data.batch_size=16", "data.batch_size=32"), ("optim.lr=0.1", "optim.lr=0.02"), ("train.seed=7", "train.seed=0")],
)
def test_resuming_with_a_changed_recipe_is_refused_unless_allowed(tmp_path, change, named):
    fit(tiny_config(tmp_path / "run", "train.epochs=1"))
    with pytest.raises(IncompatibleCheckpointError, match=named.replace(".", r"\.") + ".*--allow-changes"):
        fit(tiny_config(tmp_path / "run", 'train.resume="auto"', change))
    assert fit(tiny_config(tmp_path / "run", 'train.resume="auto"', change, "train.allow_changes=true")).history


def test_resume_refuses_another_class_count_or_class_list(tmp_path):
    """T12: the same folder run resumed on a data set with other classes, by count and by name."""
    root = make_folder(tmp_path / "a", classes=("cat", "dog", "eel"), per_class=3)
    run = ['data.dataset="folder"', 'train.resume="auto"', "data.batch_size=4"]  # 9 images: 2 batches
    fit(tiny_config(tmp_path / "run", run[0], run[2], f'data.data_dir="{root}"', "train.epochs=1"))
    renamed = make_folder(tmp_path / "b", classes=("cat", "dog", "fox"), per_class=3)
    with pytest.raises(IncompatibleCheckpointError, match=r"first difference at label 2: \['eel'\] against \['fox'\]"):
        fit(tiny_config(tmp_path / "run", *run, f'data.data_dir="{renamed}"', "train.allow_changes=true"))
    more = make_folder(tmp_path / "c", classes=("cat", "dog", "eel", "fox"), per_class=3)
    with pytest.raises(IncompatibleCheckpointError, match="num_classes=3"):
        fit(tiny_config(tmp_path / "run", *run, f'data.data_dir="{more}"', "train.allow_changes=true"))


def test_a_full_checkpoint_needs_no_extra_globals_and_round_trips_bitwise(tmp_path):
    """T3: with weights_only=True and torch's default allow-list only; and the library adds none."""
    fit(tiny_config(tmp_path / "run", "train.epochs=1", "train.checkpoint_every=3"))
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)  # no add_safe_globals anywhere
    save_checkpoint(state, tmp_path / "again.pt")
    again = load_checkpoint(tmp_path / "again.pt")
    flat_a, flat_b = _flatten(state), _flatten(again)
    assert flat_a.keys() == flat_b.keys()
    for key, value in flat_a.items():
        other = flat_b[key]
        assert torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other, key
    root = Path(alexnet.__file__).parent
    for path in root.rglob("*.py"):
        names = {n.attr for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Attribute)}
        assert not names & {"add_safe_globals", "safe_globals"}, path


def _flatten(tree, prefix=""):
    if isinstance(tree, dict):
        return {k: v for key, value in tree.items() for k, v in _flatten(value, f"{prefix}/{key}").items()}
    if isinstance(tree, (list, tuple)):
        return {k: v for i, value in enumerate(tree) for k, v in _flatten(value, f"{prefix}/{i}").items()}
    return {prefix: tree}


def test_disk_full_through_the_cli_keeps_the_old_checkpoint(tmp_path, monkeypatch, capsys):
    """T8: ENOSPC while saving epoch 2 is one line, a non-zero exit, and epoch 1's checkpoint intact."""
    import os

    args = [
        "train",
        "--dataset",
        "fake",
        "--precision",
        "fp32",
        "--no-progress",
        "-b",
        "32",
        "--lr",
        "0.02",
        "--set",
        "model.overrides.width=0.25",
        "--set",
        'optim.schedule="constant"',
        "--out",
        str(tmp_path / "r"),
    ]
    assert main([*args, "--epochs", "1"]) == 0
    before = (tmp_path / "r" / "last.pt").read_bytes()

    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("alexnet.files.os.fsync", no_space)
    capsys.readouterr()
    assert main([*args, "--epochs", "2", "--resume", "auto"]) == 2
    err = capsys.readouterr().err.strip()
    assert "No space left on device" in err and "unchanged" in err and len(err.splitlines()) == 1
    assert (tmp_path / "r" / "last.pt").read_bytes() == before
    assert not list((tmp_path / "r").glob(".*.tmp"))


TRAIN = [
    sys.executable,
    *train_command("fashion-mnist", "--lr", "0.02", "--epochs", "2", "--set", "train.checkpoint_every=5"),
]


@pytest.mark.slow
def test_sigkill_mid_epoch_resumes_bitwise_from_the_periodic_checkpoint(tmp_path):
    """T11: no handler runs on SIGKILL; the periodic checkpoint is the only state, and it is enough."""
    from alexnet.cli import main

    assert main([*TRAIN[3:], "--out", str(tmp_path / "a")]) == 0  # the reference, in this process: same arithmetic
    run = tmp_path / "b"
    proc = subprocess.Popen([*TRAIN, "--out", str(run)], stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        with contextlib.suppress(FileNotFoundError, CorruptCheckpointError):  # a write may be under way
            state = load_checkpoint(run / "last.pt")
            if state["epoch"] == 1 and state["step"] > 0:
                break  # a periodic save inside epoch 2
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = load_checkpoint(run / "last.pt")
    assert state["epoch"] == 1 and state["step"] % 5 == 0 and state["step"] > 0
    assert main([*TRAIN[3:], "--out", str(run), "--resume", "auto"]) == 0  # in this process, as the reference
    a, b = load_checkpoint(tmp_path / "a" / "last.pt"), load_checkpoint(run / "last.pt")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key


def test_labels_outside_the_class_range_stop_before_the_loss(tmp_path, monkeypatch):
    """T17: a label >= C (or < 0) is a clear error naming the batch, not an index error inside the loss."""
    import alexnet.data.sources as sources

    real = sources.fake_split

    def bad_labels(*args, **kwargs):
        split = real(*args, **kwargs)
        split.labels[5] = 10  # 10 classes: labels are 0..9
        return split

    monkeypatch.setattr(sources, "fake_split", bad_labels)
    with pytest.raises(ValueError, match=r"label outside \[0, 10\)"):
        fit(tiny_config(tmp_path / "run", "train.epochs=1"))


def test_a_sidecar_left_with_two_digests_is_settled_at_the_next_start(tmp_path):
    save_checkpoint({"model": {"w": torch.ones(3)}, "config": {}}, tmp_path / "last.pt")
    sidecar = tmp_path / "last.pt.sha256"
    good = sidecar.read_text()
    sidecar.write_text(good + "0" * 64 + "  last.pt\n")  # as a kill between the rename and the final record leaves it
    assert subprocess.run(["sha256sum", "-c", "--quiet", sidecar.name], cwd=tmp_path, capture_output=True).returncode
    remove_stale_temporaries(tmp_path)
    assert sidecar.read_text() == good
    assert subprocess.run(["sha256sum", "-c", "--quiet", sidecar.name], cwd=tmp_path).returncode == 0
