"""Every bad input a user can give is one line and exit 2, never a traceback, and costs no memory or time before it
is refused (issue 21 §4, §6): each case runs the command as a user would, under a timeout."""

from __future__ import annotations

import json
import logging
import os
import struct
from pathlib import Path

import pytest
import torch
from PIL import Image

from alexnet.cli import main

from .conftest import make_folder, make_weights


def _refused(capsys, argv, *needles):
    assert main(argv) == 2, argv
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


@pytest.fixture
def files(tmp_path):
    weights = make_weights(tmp_path / "w.safetensors")
    image = tmp_path / "x.png"
    Image.new("RGB", (40, 40), (10, 200, 30)).save(image)
    return {"weights": str(weights), "image": str(image), "dir": tmp_path}


@pytest.mark.parametrize("command", ["train", "predict", "eval", "serve"])
def test_a_device_that_does_not_exist(files, capsys, command, tmp_path):
    argv = {
        "train": ["train", "--dataset", "fake", "--out", str(tmp_path / "r")],
        "predict": ["predict", "--checkpoint", files["weights"], files["image"]],
        "eval": ["eval", "--checkpoint", files["weights"]],
        "serve": ["serve", "--checkpoint", files["weights"]],
    }[command]
    _refused(capsys, [*argv, "--device", "foo"], "'foo' is not a device")


def test_world_size_without_torchrun(tmp_path, capsys, monkeypatch):
    # Set by hand or left over from another job: one line before anything is written, not a KeyError's traceback.
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    _refused(capsys, ["train", "--dataset", "fake", "--out", str(tmp_path / "r")], "RANK is not set", "torchrun")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("port", ["abc", "99999", "-1"])
def test_a_master_port_that_is_not_one(tmp_path, capsys, monkeypatch, port):
    # torch.distributed said "invalid literal for int() with base 10: 'abc'", naming no variable.
    for name, value in (("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", port)):
        monkeypatch.setenv(name, value)
    _refused(capsys, ["train", "--dataset", "fake", "--out", str(tmp_path / "r")], f"MASTER_PORT={port!r}")
    assert not (tmp_path / "r").exists()


def test_recipes_that_are_not_tables(tmp_path, capsys):
    (tmp_path / "list.json").write_text("[1, 2]")
    _refused(capsys, ["train", "--recipe", str(tmp_path / "list.json"), "--dataset", "fake"], "must be a table")
    (tmp_path / "deep.json").write_text('{"a":' * 100_000 + "1" + "}" * 100_000)
    _refused(capsys, ["train", "--recipe", str(tmp_path / "deep.json"), "--dataset", "fake"], "not valid JSON")
    os.mkfifo(tmp_path / "fifo.toml")
    _refused(capsys, ["train", "--recipe", str(tmp_path / "fifo.toml")], "not a regular file")


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ('data.mean=["a", 1, 2]', "data.mean=['a', 1, 2] has the wrong type; expected list[float] | None"),
        # a bool is not a number: this one trained a whole run and failed writing its weights' metadata
        ("data.std=[true, 1, 1]", "data.std=[True, 1, 1] has the wrong type"),
        ('train.loggers=[["csv"]]', "train.loggers=[['csv']] has the wrong type; expected list[str]"),
        ("optim.betas=[0.9, true]", "optim.betas=[0.9, True] has the wrong type"),
    ],
)
def test_a_list_with_an_item_of_the_wrong_type_is_one_line_before_the_run(tmp_path, capsys, value, needle):
    out = tmp_path / "r"
    _refused(capsys, ["train", "--dataset", "fake", "--out", str(out), "--set", value], needle)
    assert not out.exists()


@pytest.mark.parametrize("settings", [["data.crop=300"], ["data.crop=34", "data.pad=4"]])
def test_a_crop_larger_than_the_images_is_one_line_before_the_run(tmp_path, capsys, settings):
    """A crop beyond the 32 px images: a traceback from the random offsets, or (within the padding) a run that
    trained and then evaluated each image's last pixel alone (x[..., -1:33, -1:33]), resized."""
    out = tmp_path / "r"
    sets = [word for s in settings for word in ("--set", s)]
    _refused(capsys, ["train", "--dataset", "fake", "--out", str(out), *sets], "larger than the images' 32 px")
    assert not out.exists()


def test_bad_config_values_and_flags(tmp_path, capsys, files):
    out = str(tmp_path / "r")
    _refused(
        capsys, ["train", "--dataset", "fake", "--out", out, "--set", "data.pca_eigvec=[[1, 2], [3, 4]]"], "3×3 matrix"
    )
    with pytest.raises(SystemExit) as exit_info:  # argparse's own one-line usage error
        main(["stats", "--dataset", "fake", "--resize", "-5"])
    assert exit_info.value.code == 2 and "--resize: -5 must be at least 1" in capsys.readouterr().err
    # Training's bound, where 100,000 px asked for 28 GiB and the line advised a --batch-size stats does not have.
    _refused(capsys, ["stats", "--dataset", "fake", "--resize", "100000"], "data.resize=100000 is out of range")
    (tmp_path / "feats.txt").mkdir()
    _refused(
        capsys,
        ["features", "--weights", files["weights"], files["image"], "--out", str(tmp_path / "feats.npy")],
        "is a directory",
    )
    _refused(capsys, ["paper", "fig3", files["weights"], "--out", files["image"]], "is a file")
    (tmp_path / "text.pt").write_text("hello, not a checkpoint\n")
    _refused(capsys, ["predict", "--checkpoint", str(tmp_path / "text.pt"), files["image"]], "not a checkpoint")
    # An --out under a file (/dev/full/x.npy): refused before the work, naming the file, not "File exists".
    _refused(
        capsys,
        ["features", "--weights", files["weights"], files["image"], "--out", str(tmp_path / "x.png" / "f.npy")],
        f"{tmp_path / 'x.png'} is not a directory",
    )
    with pytest.raises(SystemExit) as exit_info:  # a size limit that refuses every file
        main(["predict", "--weights", files["weights"], "--max-file-mb", "-1", files["image"]])
    assert exit_info.value.code == 2 and "--max-file-mb: -1 must be a number above 0" in capsys.readouterr().err


def test_torch_home_that_is_a_file(files, capsys, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", files["image"])
    _refused(capsys, ["predict", "--weights", "alexnet_owt.IMAGENET1K_V1", files["image"]], "TORCH_HOME")


def _caffemodel(path, dims_weights, dims_bias=(0,)):
    from alexnet.artifacts.caffe import CAFFE_LAYERS, messages

    net = messages()["NetParameter"]()
    for name in CAFFE_LAYERS:
        layer = net.layer.add()
        layer.name = name
        for dims in (dims_weights, dims_bias):
            blob = layer.blobs.add()
            blob.shape.dim.extend(dims)
    path.write_bytes(net.SerializeToString())
    return path


def test_caffe_inputs_are_checked_before_they_cost_memory(tmp_path, capsys):
    # Every blob declares 10^12 × 0 values: a few hundred bytes that once built a class list of 10^12 names.
    bomb = _caffemodel(tmp_path / "bomb.caffemodel", (10**12, 0))
    assert bomb.stat().st_size < 400
    _refused(capsys, ["convert-caffe", str(bomb)], "no AlexNet's")
    os.mkfifo(tmp_path / "fifo.caffemodel")
    _refused(capsys, ["convert-caffe", str(tmp_path / "fifo.caffemodel")], "not a regular file")
    _refused(capsys, ["convert-caffe", "/dev/zero"], "not a regular file")
    good_dims = _caffemodel(tmp_path / "ok.caffemodel", (0,))
    (tmp_path / "mean.binaryproto").write_bytes(b"\xff\xff\xff not protobuf")
    _refused(
        capsys,
        ["convert-caffe", str(good_dims), "--mean-file", str(tmp_path / "mean.binaryproto")],
        "not a Caffe mean file",
    )
    _refused(capsys, ["convert-caffe", str(good_dims), "--mean-file", "/dev/zero"], "not a regular file")
    _refused(capsys, ["convert-caffe", str(good_dims), "--classes", str(tmp_path)], "is a directory")


def _nested_safetensors(path, depth):
    """A safetensors file by hand: its header's metadata nested ``depth`` deep."""
    meta = '{"alexnet": "' + ("[" * depth + "]" * depth) + '"}'
    header = json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}})[:-1]
    header += ', "__metadata__": ' + meta + "}"
    path.write_bytes(struct.pack("<Q", len(header)) + header.encode() + b"\0" * 4)
    return path


def test_safetensors_are_checked_from_the_header(tmp_path, capsys, files):
    from safetensors.torch import load_file, save_file

    _refused(
        capsys,
        ["predict", "--checkpoint", str(_nested_safetensors(tmp_path / "deep.safetensors", 50_000)), files["image"]],
        "not a valid alexnet safetensors",
    )
    tensors = load_file(files["weights"])
    from safetensors import safe_open

    with safe_open(files["weights"], "pt") as f:
        meta = f.metadata()
    extra = dict(tensors, unused=torch.zeros(4))  # an extra tensor (of 4 GB, say) is refused before it is read
    save_file(extra, tmp_path / "extra.safetensors", metadata=meta)
    _refused(
        capsys,
        ["predict", "--checkpoint", str(tmp_path / "extra.safetensors"), files["image"]],
        "unexpected ['unused']",
    )
    first = next(k for k, v in tensors.items() if v.is_floating_point())
    integer = dict(tensors, **{first: tensors[first].to(torch.int32)})
    save_file(integer, tmp_path / "int.safetensors", metadata=meta)
    _refused(capsys, ["predict", "--checkpoint", str(tmp_path / "int.safetensors"), files["image"]], "is I32")


def test_a_class_folder_linked_to_its_parent_is_refused(tmp_path, capsys):
    root = make_folder(tmp_path / "imgs", classes=("a", "b"), per_class=3)
    for target in (".", ".."):  # train/loop -> train (its parent) or the data root: every image again, as "loop"
        os.symlink(target, root / "train" / "loop")
        _refused(
            capsys,
            ["train", "--dataset", "folder", "--data-dir", str(root), "--out", str(tmp_path / "r"), "--epochs", "1"],
            "symbolic link",
            "revisits",
        )
        os.unlink(root / "train" / "loop")
    os.symlink("/usr/share", root / "train" / "outside")
    _refused(
        capsys,
        ["train", "--dataset", "folder", "--data-dir", str(root), "--out", str(tmp_path / "r"), "--epochs", "1"],
        "leaves the data root",
    )


def test_another_model_than_the_recipes_takes_its_own_input_size(tmp_path):
    """`train --model alexnet_paper --dataset fake` with the default (Fashion-MNIST) recipe: the recipe's 28 px
    alexnet_small overrides are not applied to alexnet_paper, whose 227 px crops the data follows."""
    out = tmp_path / "r"
    argv = [
        "train",
        "--model",
        "alexnet_paper",
        "--dataset",
        "fake",
        "--out",
        str(out),
        "--epochs",
        "1",
        "--limit-train-batches",
        "1",
        "--limit-val-batches",
        "1",
        "-b",
        "4",
        "--no-progress",
        "--set",
        "model.overrides.width=0.125",
        "--precision",
        "fp32",
    ]
    assert main(argv) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["name"] == "alexnet_paper" and config["model"]["overrides"] == {"width": 0.125}


@pytest.mark.parametrize("command", ["predict", "eval", "serve", "export"])
def test_a_text_file_given_as_a_checkpoint(files, capsys, command):
    """Text reaches torch's unpickler as its legacy format, whose errors (IndexError here) are no checkpoint error."""
    text = files["dir"] / "passwd.pt"
    text.write_text("root:x:0:0:root:/root:/bin/bash\n")
    tail = {"predict": [files["image"]], "export": ["--format", "onnx", "--out", str(files["dir"] / "m.onnx")]}
    _refused(capsys, [command, "--checkpoint", str(text), *tail.get(command, [])], "not a checkpoint")


def test_running_out_of_memory_is_one_line(files, capsys, monkeypatch):
    """A batch or input too large for the machine (``input_size=4096`` asks for 137 GB) is one line and exit 1, on
    the CPU with torch's own error and on a GPU with CUDA's; any other RuntimeError stays a traceback (a bug)."""
    import alexnet.cli as cli

    help_text, add, _ = cli.COMMANDS["eval"]
    argv = ["eval", "--checkpoint", files["weights"]]

    def run(failure):
        monkeypatch.setitem(cli.COMMANDS, "eval", (help_text, add, failure))
        return main(argv)

    assert run(lambda args: torch.empty(2**50)) == 1  # 4 PiB: refused by the allocator on any machine
    err = capsys.readouterr().err
    assert err.strip() == (
        "alexnet eval: error: out of memory in RAM (it asked for 4194304.0 GiB more): use a smaller --batch-size "
        "(-v shows where)"
    )
    # The advice names what the command takes: training's sizes, or no flag for a command without a batch size.
    for command, args, advice in (
        ("train", ["--dataset", "fake"], "use a smaller --batch-size, input size or width"),
        ("features", [files["image"], "--weights", files["weights"], "--out", "f.npy"], "more memory than is free"),
    ):
        monkeypatch.setitem(cli.COMMANDS, command, (*cli.COMMANDS[command][:2], lambda args: torch.empty(2**50)))
        assert main([command, *args]) == 1
        assert capsys.readouterr().err.strip().endswith(f"{advice} (-v shows where)"), command

    class OutOfMemoryError(RuntimeError):  # torch.OutOfMemoryError's name and message, without a GPU
        pass

    def cuda(args):
        raise OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB (GPU 0; 7.79 GiB total capacity)\nmore")

    assert run(cuda) == 1
    assert "out of memory on the GPU (it asked for 20.00 MiB more)" in capsys.readouterr().err

    def bug(args):
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        run(bug)


def test_report_is_given_something_that_is_no_run_directory(files, capsys):
    """`report` reads a run's directory: a missing path, a file (the checkpoint itself) and a directory without a
    run's last.pt each get one line saying what to give."""
    _refused(capsys, ["report", str(files["dir"] / "no-such-run")], "not there: give a run directory")
    _refused(capsys, ["report", files["weights"]], "is a file: give a run directory")
    _refused(capsys, ["report", str(files["dir"])], "not a run directory: it has no last.pt")


@pytest.fixture(scope="module")
def program(tmp_path_factory):
    """An exported program (.pt2) of a small model: it predicts, but holds a graph, not the layers."""
    root = tmp_path_factory.mktemp("program")
    weights = make_weights(root / "w.safetensors")
    out = root / "m.pt2"
    assert main(["export", "--weights", str(weights), "--format", "exported-program", "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize(
    ("argv", "purpose"),
    [
        (["features", "--weights", "{p}", "{img}", "--out", "{d}/f.npy"], "to read features from"),
        (["export", "--weights", "{p}", "--format", "onnx", "--out", "{d}/m.onnx"], "to export"),
        (["quantize", "--weights", "{p}", "--out", "{d}/q.pt2"], "to quantize"),
        (["paper", "fig3", "{p}", "--out", "{d}/fig"], "to draw Figure 3 from"),
        (["paper", "fig4", "{p}", "--out", "{d}/fig", "--dataset", "fake"], "to take fc7 features from"),
        (["train", "--dataset", "fake", "--weights", "{p}", "--out", "{d}/run"], "to start training from"),
    ],
)
def test_a_program_where_the_layers_are_needed_is_one_line(program, files, tmp_path, capsys, argv, purpose):
    """features, export, quantize, Figures 3 and 4 and fine-tuning read the network's layers; given a .pt2 program
    (which predict, eval and serve run) they ended in AttributeError, StopIteration or torch.export's traceback."""
    out = tmp_path / "out"
    out.mkdir()
    words = [w.format(p=program, img=files["image"], d=out) for w in argv]
    _refused(capsys, words, f"{program} is a program", f"no layers {purpose}", "the .safetensors or .pt")
    assert not any(out.iterdir())


@pytest.mark.parametrize(
    "argv",
    [
        ["eval", "--weights", "{m}", "--dataset", "fake"],
        ["export", "--weights", "{m}", "--format", "onnx", "--out", "{d}/again.onnx"],
        ["quantize", "--weights", "{m}", "--out", "{d}/q.pt2"],
        ["features", "--weights", "{m}", "{img}", "--out", "{d}/f.npy"],
    ],
)
def test_an_onnx_file_is_named_as_one_where_ours_are_read(files, tmp_path, capsys, argv):
    """`predict` runs ONNX files; eval, export, quantize and features said `m.onnx is truncated or not a checkpoint
    (not the zip archive torch.save writes)`."""
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"\x08\x07ONNX-ish")
    out = tmp_path / "out"
    out.mkdir()
    words = [w.format(m=onnx, img=files["image"], d=out) for w in argv]
    _refused(capsys, words, f"{onnx} is an ONNX model", "alexnet predict", ".safetensors or .pt it was exported from")
    assert not any(out.iterdir())


@pytest.mark.parametrize(
    "argv",
    [
        ["predict", "--weights", "{r}", "{img}"],
        ["eval", "--weights", "{r}", "--dataset", "fake"],
        ["export", "--weights", "{r}", "--format", "onnx", "--out", "{d}/m.onnx"],
        ["serve", "--weights", "{r}", "--port", "0"],
        ["train", "--dataset", "fake", "--weights", "{r}", "--out", "{d}/run"],
    ],
)
def test_a_directory_without_a_runs_model_names_the_model_files_it_holds(files, tmp_path, capsys, argv):
    """A run directory is its model (`best.safetensors`, else `last.pt`); a directory with neither said only
    "checkpoint DIR is a directory": it names the model files it holds, or that it holds none."""
    other = tmp_path / "exports"
    other.mkdir()
    for name in ("notes.md", "m.pt2", "w.safetensors"):
        (other / name).write_bytes(b"x")
    out = tmp_path / "out"
    out.mkdir()
    words = [w.format(r=other, img=files["image"], d=out) for w in argv]
    _refused(
        capsys, words, f"{other} has neither best.safetensors nor last.pt", f"({other}/w.safetensors, {other}/m.pt2)"
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    words = [w.format(r=empty, img=files["image"], d=out) for w in argv]
    _refused(capsys, words, f"{empty} is a directory with no model file")
    assert not any(out.iterdir())


def test_a_run_directory_predicts_as_its_best_weights(files, tmp_path, capsys, caplog):
    run = tmp_path / "runs" / "demo"
    run.mkdir(parents=True)
    (run / "best.safetensors").write_bytes((tmp_path / "w.safetensors").read_bytes())  # the `files` fixture's
    (run / "last.pt").write_bytes(b"not read: best.safetensors comes first")
    assert main(["predict", "--weights", files["weights"], files["image"]]) == 0
    by_file = capsys.readouterr().out
    with caplog.at_level(logging.INFO, logger="alexnet"):
        assert main(["predict", "--weights", str(run), files["image"]]) == 0
    assert capsys.readouterr().out == by_file
    assert f"{run}: the model in it, best.safetensors" in caplog.text


@pytest.mark.parametrize("command", ["eval", "fig4", "predict", "export"])
def test_a_refusal_after_a_run_directory_is_resolved_is_the_one_line(files, tmp_path, capsys, caplog, command):
    # Which file a run directory stood for was said as it was resolved, so a data set that is not there (eval, fig4)
    # or a damaged model file (predict, export) came after that line: now it is said once the checks have passed.
    from alexnet.artifacts.loader import load_trained

    run = tmp_path / "run"
    run.mkdir()
    weights = Path(files["weights"]).read_bytes()
    damaged = command in ("predict", "export")
    (run / "best.safetensors").write_bytes(weights[: len(weights) // 2] if damaged else weights)
    no_data = ["--dataset", "cifar10", "--data-dir", str(tmp_path / "no-data")]
    argv = {
        "eval": ["eval", "--checkpoint", str(run), *no_data],
        "fig4": ["paper", "fig4", str(run), "--out", str(tmp_path / "fig4"), *no_data],
        "predict": ["predict", "--checkpoint", str(run), files["image"]],
        "export": ["export", "--checkpoint", str(run), "--format", "onnx", "--out", str(tmp_path / "m.onnx")],
    }[command]
    with caplog.at_level(logging.INFO, logger="alexnet"):
        _refused(capsys, argv, "best.safetensors" if damaged else "cifar10")
        assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
        if not damaged:  # and said where the model loads
            load_trained(run)
            assert f"{run}: the model in it, best.safetensors" in caplog.text


def test_names_longer_than_a_file_system_takes_are_one_line(files, capsys, tmp_path):
    """A name of more than 255 bytes (the file systems' limit) ended train, eval, export, predict, serve and
    --recipe in OSError tracebacks; names a little shorter were refused by features and export, or ended export in
    a traceback, because the files staged beside them took the name and more."""
    weights, image, too_long = files["weights"], files["image"], str(tmp_path / ("g" * 260))
    for argv in (
        ["train", "--dataset", "fake", "--out", too_long],
        ["eval", "--checkpoint", weights, "--dataset", "fake", "--out", too_long],
        ["features", "--weights", weights, image, "--out", too_long + ".npy"],
        ["export", "--weights", weights, "--format", "exported-program", "--out", too_long + ".pt2"],
        ["quantize", "--weights", weights, "--out", too_long + ".pt2"],
        ["predict", "--weights", too_long + ".safetensors", image],
        ["serve", "--weights", too_long + ".safetensors"],
        ["train", "--recipe", too_long + ".toml", "--dataset", "fake"],
    ):
        err = _refused(capsys, argv, "g" * 100)
        assert "File name too long" in err or "longer than 255 bytes" in err, err
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("g")]
    assert main(["predict", "--weights", weights, too_long + ".png", image]) == 1  # reported for its path alone
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("\terror: cannot read (File name too long)") and "%" in lines[1], lines
    long = str(tmp_path / ("f" * 240))  # legal: 244 bytes with its suffix
    assert main(["features", "--weights", weights, image, "--out", long + ".npy"]) == 0
    assert main(["export", "--weights", weights, "--format", "exported-program", "--out", long + ".pt2"]) == 0
    assert sorted(p.suffix for p in tmp_path.iterdir() if p.name.startswith("f")) == [".npy", ".pt2", ".txt"]


def test_a_run_directory_inside_the_datas_splits_is_refused(tmp_path, capsys, monkeypatch):
    """`--out data/train/run` made the run directory a class folder of the data: the run failed with "class folder
    data/train/run has no images", and had it gone on, its checkpoints and figures would have been a class of the
    next run's training images. Refused by name now, before anything is written; beside the splits is fine."""
    data = make_folder(tmp_path / "data")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    base = ["train", "--dataset", "folder", "--data-dir", str(data), "--epochs", "1", "--batch-size", "4"]
    for out in (data / "train" / "run", data / "val" / "cat" / "run"):
        _refused(capsys, [*base, "--out", str(out)], "is inside the data's", "choose one outside it")
    monkeypatch.chdir(data)  # the same through relative paths
    _refused(capsys, ["train", "--dataset", "folder", "--data-dir", ".", "--out", "train/run"], "inside the data's")
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
