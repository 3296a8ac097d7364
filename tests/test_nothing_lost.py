"""Nothing already written is lost (issue 21 §2): a finished run is not overwritten by a new one, a run directory
has one writer at a time, an experiment's report never replaces a user's file, a run that fails before writing
leaves no empty directory, an export or quantization never replaces its own input, a device or FIFO is never
replaced by a file, and a full disk is one line with the previous file intact."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from alexnet import files
from alexnet.artifacts import checkpoint
from alexnet.cli import main
from alexnet.errors import WriteError

TRAIN = [
    "train",
    "--recipe",
    "fashion-mnist",
    "--dataset",
    "fake",
    "--no-progress",
    "--precision",
    "fp32",
    "--device",
    "cpu",
    "-b",
    "64",
    "--set",
    "model.overrides.width=0.25",
    "--set",
    "model.overrides.input_size=32",
    "--limit-train-batches",
    "2",
]


def _digests(run):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(run.iterdir()) if p.is_file()}


def _one_line(err: str) -> None:
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main([*TRAIN, "--epochs", "1", "--out", str(out)]) == 0
    return out


def test_a_new_run_into_a_finished_one_is_refused(finished_run, capsys):
    capsys.readouterr()
    before = _digests(finished_run)
    assert main([*TRAIN, "--epochs", "1", "--out", str(finished_run)]) == 2
    err = capsys.readouterr().err
    _one_line(err)
    assert "already holds a run" in err and "--resume auto" in err and "new --out" in err
    assert _digests(finished_run) == before
    assert main([*TRAIN, "--epochs", "1", "--out", str(finished_run), "--resume", "auto"]) == 0  # a resume is fine


def test_a_new_run_never_writes_over_files_of_the_users(tmp_path, capsys):
    """`--out .` in a project: its own config.json and report.md (names a run writes) are refused before anything
    is written, a resume there too (it has no run to continue); a run's own config.json and held_out.json, left by a
    run that stopped before its first checkpoint, are started over."""
    project = tmp_path / "project"
    project.mkdir()
    for name, text in (("config.json", '{"mine": 1}'), ("report.md", "# my notes"), ("curves.png", "not ours")):
        (project / name).write_text(text)
        before = _digests(project)
        for resume in ([], ["--resume", "auto"]):
            capsys.readouterr()
            assert main([*TRAIN, "--epochs", "1", "--out", str(project), *resume]) == 2
            err = capsys.readouterr().err
            _one_line(err)
            assert f"holds {name}, which a run writes" in err and "new --out" in err, err
            assert _digests(project) == before
        (project / name).unlink()
    (project / "epoch-3.pt").write_bytes(b"someone's checkpoint")
    assert main([*TRAIN, "--epochs", "1", "--out", str(project)]) == 2
    assert "holds epoch-3.pt" in capsys.readouterr().err

    stopped = tmp_path / "stopped"  # what a run killed in its first epoch leaves
    assert main([*TRAIN, "--epochs", "1", "--out", str(stopped)]) == 0
    for path in stopped.iterdir():
        if path.name not in ("config.json", "held_out.json"):
            path.unlink()
    assert main([*TRAIN, "--epochs", "1", "--out", str(stopped)]) == 0
    assert (stopped / "last.pt").is_file()


def test_a_run_that_fails_before_writing_leaves_no_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    missing = ["train", "--dataset", "mnist", "--data-dir", str(tmp_path / "nowhere"), "--set", "data.download=false"]
    assert main(missing) == 2
    _one_line(capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []  # not runs/<time>-alexnet_small-mnist/ holding only its lock
    assert main([*missing, "--out", str(tmp_path / "a" / "b")]) == 2
    assert list(tmp_path.iterdir()) == []  # nor the parents it made
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    assert main([*missing, "--out", str(theirs)]) == 2
    assert theirs.is_dir()  # a directory the user made stays, empty or not
    assert main([*missing, "--out", str(theirs / "run")]) == 2
    assert list(tmp_path.iterdir()) == [theirs] and list(theirs.iterdir()) == [theirs / ".lock"]


@pytest.mark.slow
def test_a_run_directory_has_one_writer(tmp_path, capsys):
    out = tmp_path / "run"
    first = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "alexnet.cli",
            *TRAIN,
            "--epochs",
            "50",
            "--out",
            str(out),
            "--limit-train-batches",
            "16",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 120
        while not (out / "metrics.csv").exists() and time.time() < deadline and first.poll() is None:
            time.sleep(0.05)
        assert first.poll() is None, first.stderr.read()
        for extra in ([], ["--resume", "auto"]):
            assert main([*TRAIN, "--epochs", "2", "--out", str(out), *extra]) == 2
            err = capsys.readouterr().err
            _one_line(err)
            assert f"is being written by process {first.pid}" in err
    finally:
        first.kill()
        first.wait()
    # The lock died with its process: the directory can be resumed now.
    assert main([*TRAIN, "--epochs", "1", "--out", str(out), "--resume", "auto"]) == 0


def test_export_and_quantize_never_replace_their_input_or_a_device(finished_run, tmp_path, capsys):
    weights = finished_run / "best.safetensors"
    before = weights.read_bytes()
    assert main(["export", "--checkpoint", str(weights), "--format", "onnx", "--out", str(weights)]) == 2
    _one_line(err := capsys.readouterr().err)
    assert "is the model being exported" in err and weights.read_bytes() == before
    program = tmp_path / "m.pt2"
    assert main(["export", "--checkpoint", str(weights), "--format", "exported-program", "--out", str(program)]) == 0
    assert main(["quantize", "--checkpoint", str(program), "--out", str(program)]) == 2
    assert "is the model being quantized" in capsys.readouterr().err
    fifo = tmp_path / "fifo.onnx"
    os.mkfifo(fifo)
    for cmd in (
        ["export", "--checkpoint", str(weights), "--format", "onnx"],
        ["quantize", "--checkpoint", str(weights)],
    ):
        out = str(fifo) if cmd[0] == "export" else str(tmp_path / "fifo.pt2")
        if cmd[0] == "quantize":
            os.mkfifo(out)
        assert main([*cmd, "--out", out]) == 2
        _one_line(err := capsys.readouterr().err)
        assert "not a regular file" in err
    assert fifo.is_fifo() and (tmp_path / "fifo.pt2").is_fifo()
    with pytest.raises(WriteError, match="is a directory"):
        files.write_text(tmp_path, "x")


def test_no_export_features_conversion_or_evaluation_replaces_a_runs_results(finished_run, tmp_path, capsys):
    """An export, features or a Caffe conversion written over a run's checkpoints or weights would lose them, and an
    evaluation's confusion matrix its report's figure; a file named for another format would be read as that
    format."""
    weights = str(finished_run / "best.safetensors")
    image = tmp_path / "x.png"
    Image.new("RGB", (40, 40), (10, 200, 30)).save(image)
    before = _digests(finished_run)
    for name in ("last.pt", "best.safetensors", "metrics.csv"):
        target = str(finished_run / name)
        for cmd in (
            ["export", "--checkpoint", weights, "--format", "torchscript", "--out", target],
            ["features", "--weights", weights, str(image), "--out", target],
            ["convert-caffe", str(tmp_path / "none.caffemodel"), "--out", target],
        ):
            code = main(cmd)
            err = capsys.readouterr().err
            _one_line(err)
            assert code == 2, (cmd, err)
    assert main(["export", "--checkpoint", weights, "--format", "torchscript", "--out", str(finished_run / "last.pt")])
    assert "it is a checkpoint with its digest beside it" in capsys.readouterr().err
    assert main(["features", "--weights", weights, str(image), "--out", str(finished_run / "best.safetensors")]) == 2
    assert "name the file .npy" in capsys.readouterr().err
    assert main(["export", "--checkpoint", weights, "--format", "onnx", "--out", str(tmp_path / "m.pt")]) == 2
    assert "name the onnx file .onnx" in capsys.readouterr().err
    # An evaluation's figure over the run report's (of the test split; this one may score other images): refused
    # before any work, and before its eval.json is written there.
    assert main(["eval", "--weights", weights, "--out", str(finished_run)]) == 2
    assert "it is one of the run" in capsys.readouterr().err and not (finished_run / "eval.json").exists()
    assert _digests(finished_run) == before
    # A .pt outside a run, without a digest, is the user's to replace: a TorchScript export there is written.
    assert main(["export", "--checkpoint", weights, "--format", "torchscript", "--out", str(tmp_path / "m.pt")]) == 0


def test_features_keep_a_users_text_file_beside_the_array(finished_run, tmp_path, capsys):
    """`features --out notes.npy` writes its file order as notes.txt: a user's notes.txt there is refused before
    any work, not replaced; the command's own order from an earlier run is written again."""
    weights = str(finished_run / "best.safetensors")
    image = tmp_path / "x.png"
    Image.new("RGB", (40, 40), (10, 200, 30)).save(image)
    notes, out = tmp_path / "notes.txt", str(tmp_path / "notes.npy")
    notes.write_text("my notes\n")
    assert main(["features", "--weights", weights, str(image), "--out", out]) == 2
    _one_line(err := capsys.readouterr().err)
    assert "holds notes.txt" in err and notes.read_text() == "my notes\n" and not Path(out).exists()
    # Nor does an array beside it of another number of rows than the text has lines.
    np.save(out, np.zeros((3, 4)))
    assert main(["features", "--weights", weights, str(image), "--out", out]) == 2
    assert notes.read_text() == "my notes\n"
    notes.unlink()
    for _ in range(2):  # the second run replaces its own order
        assert main(["features", "--weights", weights, str(image), str(image), "--out", out]) == 0
        assert notes.read_text() == f"{image}\n{image}\n" and np.load(out).shape[0] == 2


def test_features_of_no_readable_image_write_nothing(finished_run, tmp_path, capsys):
    out = tmp_path / "f.npy"
    out.write_bytes(b"an earlier result")
    weights = str(finished_run / "best.safetensors")
    code = main(["features", "--weights", weights, "/nonexistent.png", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1 and "no image could be read" in err and out.read_bytes() == b"an earlier result"
    assert "/nonexistent.png: cannot read" in err and "/nonexistent.png: /nonexistent.png" not in err


def test_a_full_disk_is_one_line_and_keeps_the_previous_file(tmp_path, monkeypatch, capsys):
    """ENOSPC from the kernel itself: the temporary file is /dev/full, where every write fails with ENOSPC."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    path = tmp_path / "last.pt"
    checkpoint.save_checkpoint({"model": {"w": torch.ones(3)}, "config": {}}, path)
    good = path.read_bytes()
    real = files.tempfile.mkstemp

    def full_disk(*args, **kwargs):
        fd, name = real(*args, **kwargs)
        os.close(fd)
        return os.open("/dev/full", os.O_WRONLY), name

    monkeypatch.setattr(files.tempfile, "mkstemp", full_disk)
    big = {"model": {"w": torch.ones(1 << 20)}, "config": {}}  # 4 MB: more than any write buffer holds
    with pytest.raises(WriteError, match="could not write .*last.pt.*unchanged"):
        checkpoint.save_checkpoint(big, path)  # torch.save reports ENOSPC as a RuntimeError
    assert path.read_bytes() == good and checkpoint.load_checkpoint(path)["model"]["w"].shape == (3,)

    def torch_writer_failure(f):  # what torch.save raises when it writes to a path on a full disk
        raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file")

    with pytest.raises(WriteError, match="PytorchStreamWriter failed writing file; any previous last.pt is unchanged"):
        files.atomic_write(path, torch_writer_failure)
    assert path.read_bytes() == good
    pytest.importorskip("matplotlib")
    from alexnet.experiments.report import plot_curves

    (tmp_path / "metrics.csv").write_text("epoch,train_loss,train_acc1,val_loss,val_acc1\n1,1,50,1,50\n")
    with pytest.raises(WriteError, match="curves.png"):
        plot_curves(tmp_path / "metrics.csv", tmp_path / "curves.png")
    assert not (tmp_path / "curves.png").exists()  # no truncated PNG in its place
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize(
    "command, name",
    [
        (["reproduce", "--records", "{project}", "--out", "{runs}", "--only", "lrn", "--seeds", "1"], "report.md"),
        (["reproduce", "--records", "{project}", "--out", "{runs}", "--only", "lrn", "--seeds", "1"], "results.json"),
        (["reproduce", "--out", "{project}", "--only", "lrn", "--seeds", "1"], "curves_lrn.png"),
        (["paper", "fig1", "--out", "{project}", "--max-epochs", "1"], "fig1.json"),
        (["paper", "fig1", "--out", "{project}", "--max-epochs", "1"], "fig1.png"),
    ],
)
def test_experiments_never_write_over_files_of_the_users(command, name, tmp_path, capsys):
    """`reproduce` and `paper fig1` write their report and figures when they finish, into a directory the user
    names: a user's file of such a name there is refused before anything trains, not replaced hours later."""
    project, runs = tmp_path / "project", tmp_path / "runs"
    project.mkdir()
    (project / name).write_text('{"mine": 1}')
    before = _digests(project)
    tiny = ["--dataset", "fake", "--no-progress", "--precision", "fp32", "--set", "train.limit_train_batches=1"]
    args = [a.format(project=project, runs=runs) for a in command]
    capsys.readouterr()
    assert main([*args, *tiny]) == 2
    err = capsys.readouterr().err
    _one_line(err)
    flag = "--records" if "--records" in command else "--out"
    assert f"holds {name}, which this command writes when it finishes" in err and f"another {flag}" in err, err
    assert _digests(project) == before and [p.name for p in project.iterdir()] == [name] and not runs.exists()


def test_a_reproductions_report_slot_taken_by_a_directory_is_refused_before_the_work(tmp_path, capsys):
    """Its records there (its own), but ``report.md`` a directory: said before training, not when writing it."""
    records = tmp_path / "records"
    (records / "lrn" / "paper" / "seed0").mkdir(parents=True)
    (records / "lrn" / "paper" / "seed0" / "done.json").write_text("{}")
    (records / "report.md").mkdir()
    runs = tmp_path / "runs"
    args = ["reproduce", "--records", str(records), "--out", str(runs), "--only", "lrn", "--seeds", "1"]
    assert main([*args, "--dataset", "fake", "--no-progress"]) == 2
    err = capsys.readouterr().err
    _one_line(err)
    assert "report.md: it exists and is a directory" in err and not runs.exists(), err


def test_a_reproductions_own_results_are_recognised(tmp_path):
    from alexnet.experiments.reproduce import _holds_reproduction

    (tmp_path / "results.json").write_text('{"lrn": {"verdict": "reproduced in sign", "arms": {}}}')
    assert _holds_reproduction(tmp_path)
    for other in ("{}", '{"lrn": 1}', '{"mine": {"notes": []}}', "[1, 2]", "not json"):
        (tmp_path / "results.json").write_text(other)
        assert not _holds_reproduction(tmp_path), other
    record = tmp_path / "lrn" / "paper" / "seed0" / "done.json"  # a record, before any report was written
    record.parent.mkdir(parents=True)
    record.write_text("{}")
    assert _holds_reproduction(tmp_path)


def test_a_run_file_that_cannot_be_written_is_said_before_training(tmp_path, capsys):
    """`last.pt` a link to nowhere (checkpoints moved to a disk since unmounted) or to a device: a new run trained
    its first epoch and then failed writing it; `--resume auto` skipped it without a word, resumed from `best.pt`
    and failed the same way after the epoch. Both are one line now, before the data loads or anything trains."""
    new = tmp_path / "new"
    new.mkdir()
    (new / "last.pt").symlink_to(tmp_path / "unmounted" / "last.pt")
    assert main([*TRAIN, "--out", str(new), "--epochs", "1"]) == 2
    _one_line(err := capsys.readouterr().err)
    assert "last.pt: it is a dangling symbolic link" in err and sorted(os.listdir(new)) == ["last.pt"]
    run = tmp_path / "run"
    assert main([*TRAIN, "--out", str(run), "--epochs", "1"]) == 0
    capsys.readouterr()
    (run / "last.pt").unlink()
    (run / "last.pt").symlink_to("/dev/null")
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir() if p.is_file()}
    assert main([*TRAIN, "--out", str(run), "--epochs", "2", "--resume", "auto"]) == 2
    _one_line(err := capsys.readouterr().err)
    assert "last.pt: it exists and is not a regular file" in err
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir() if p.is_file()} == before
