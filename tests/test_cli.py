"""The console script, run as a user runs it."""

import csv
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from alexnet.cli import main
from tests.helpers import child_signals


def test_models_table(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "alexnet_paper" in out and "60,965,224" in out and "61,100,840" in out


def test_models_json(capsys):
    assert main(["models", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {r["name"] for r in rows} >= {"alexnet_paper", "alexnet_owt", "alexnet_d2l", "alexnet_small"}
    assert all(r["macs"] > 0 for r in rows)


def test_console_script_runs():
    script = Path(sys.executable).with_name("alexnet")  # the installed console script, as a user types it
    assert script.is_file(), "pip install -e . puts an alexnet script beside the interpreter"
    result = subprocess.run([str(script), "models"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "alexnet_small" in result.stdout
    version = subprocess.run([str(script), "--version"], capture_output=True, text=True)
    import alexnet

    assert version.returncode == 0 and version.stdout.strip() == f"alexnet {alexnet.__version__}"


def _probe(words: list[str], report: str) -> subprocess.CompletedProcess:
    """The command run as ``python -m alexnet.cli`` runs it, ``report`` (an expression) printed to stderr at exit."""
    probe = (
        f"import atexit, gc, runpy, sys; sys.argv = ['alexnet', *{words!r}];"
        f"atexit.register(lambda: print({report}, file=sys.stderr));"
        "runpy.run_module('alexnet.cli', run_name='__main__')"
    )
    return subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    ("words", "code", "out"),
    [
        (["--help"], 0, "usage: alexnet"),
        (["--version"], 0, "alexnet "),
        (["train", "--help"], 0, "--recipe"),
        (["predict", "--bogus"], 2, "alexnet predict: error: the following arguments are required"),
        (["eval", "--batch-size", "x"], 2, "alexnet eval: error: argument -b/--batch-size: 'x' is not an integer"),
        (["train", "--list-recipes"], 0, "paper-imagenet\n"),  # 3.3 s when it imported training first
        (["weights"], 0, "alexnet_owt.IMAGENET1K_V1 "),  # 1.7 s when its catalog imported torch
        (["features", "--layer", "FC7"], 2, "(choose from 'fc7', 'fc6', 'pool5'); did you mean 'fc7'? (see"),
        (["trian"], 2, "); did you mean 'train'? (see alexnet --help)"),
    ],
)
def test_help_version_and_usage_errors_answer_without_importing_torch(words, code, out):
    """`import alexnet` and the command line's parser import no torch (1.4 s of a 1.5 s ``alexnet --help``), so
    these, and listing the recipes and the published weights, answer at once."""
    done = _probe(words, "'torch' in sys.modules")
    assert done.returncode == code, done.stderr
    assert out in done.stdout + done.stderr
    assert done.stderr.splitlines()[-1] == "False", done.stderr
    imports = "import sys, alexnet, alexnet.cli; print(sorted({'torch', 'numpy'} & set(sys.modules)))"
    light = subprocess.run([sys.executable, "-c", imports], capture_output=True, text=True)
    assert light.stdout.strip() == "[]", light.stderr


@pytest.mark.parametrize(("words", "code", "out"), [(["models"], 0, "alexnet_small"), (["--version"], 0, "alexnet")])
def test_the_commands_exit_without_the_interpreters_last_collection(words, code, out):
    """The console script and ``python -m alexnet.cli`` end through `run`, which freezes what is left for the exit
    (the interpreter's last garbage collection took about 0.5 s of a short command), also where argparse ends the
    command (``--version``, ``--help``, a usage error); the output is all there."""
    import tomllib

    scripts = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"alexnet": "alexnet.cli:run"}
    done = _probe(words, "'frozen', gc.get_freeze_count()")
    assert done.returncode == code and out in done.stdout, done.stderr
    assert done.stderr.split()[:1] == ["frozen"] and int(done.stderr.split()[1]) > 10_000, done.stderr


def _train_args(out, *extra):
    return [
        "train",
        "--recipe",
        "fashion-mnist",
        "--dataset",
        "fake",
        "--out",
        str(out),
        "--epochs",
        "1",
        "--precision",
        "fp32",
        "--no-progress",
        "--set",
        "model.overrides.width=0.25",
        "--set",
        "model.overrides.input_size=32",
        "-b",
        "64",
        *extra,
    ]


def test_verbose_shows_our_lines_not_matplotlibs_font_search(tmp_path):
    """-v is for debugging AlexNet: our DEBUG lines and every library's INFO, not matplotlib's score for each
    installed font (hundreds of lines while the report is drawn)."""
    args = _train_args(tmp_path / "run", "--limit-train-batches", "2", "--limit-val-batches", "1")
    cli = [sys.executable, "-m", "alexnet.cli", "-v", *args]
    done = subprocess.run(cli, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "run" / "curves.png").is_file()  # the report was drawn, with matplotlib
    assert "fake (recipe fashion-mnist): 2 train batches of" in done.stderr  # our own lines are there
    assert "findfont" not in done.stderr, done.stderr[:2000]


def _eval_json(path, *args, capsys):
    assert main(["eval", "--checkpoint", str(path), "--json", "--precision", "fp32", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_train_then_eval(tmp_path, capsys, caplog, monkeypatch):
    assert main(_train_args(tmp_path / "run", "--limit-train-batches", "8")) == 0
    assert "best val acc1" in capsys.readouterr().out
    assert (
        main(["eval", "--checkpoint", str(tmp_path / "run" / "best.safetensors"), "--json", "--precision", "fp32"]) == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert set(result) >= {"loss", "acc1", "acc5", "err1", "err5", "per_class_acc", "images"}
    assert result["images"] == 256
    with open(tmp_path / "run" / "metrics.csv") as f:
        last = list(csv.DictReader(f))[-1]
    # The recipe holds 10% of the training images out for validation; the test split was evaluated once after the
    # last epoch. Evaluated again, each gives the figure training logged (the same fp32 arithmetic).
    assert main(["eval", "--checkpoint", str(tmp_path / "run" / "last.pt"), "--json", "--precision", "fp32"]) == 0
    test = json.loads(capsys.readouterr().out)
    assert test["acc1"] == pytest.approx(float(last["test_acc1"]), abs=1e-3)
    assert test["loss"] == pytest.approx(float(last["test_loss"]), abs=1e-4)
    assert (
        main(
            [
                "eval",
                "--checkpoint",
                str(tmp_path / "run" / "last.pt"),
                "--json",
                "--precision",
                "fp32",
                "--split",
                "val",
            ]
        )
        == 0
    )
    held = json.loads(capsys.readouterr().out)
    assert held["images"] == 102 and held["acc1"] == pytest.approx(float(last["val_acc1"]), abs=1e-3)
    # A run directory is its model; for its held-out images the best epoch's checkpoint, best.pt (best.safetensors,
    # the same weights, knows no split: refused, naming the checkpoints beside it) ...
    run = tmp_path / "run"
    by_dir = ["eval", "--checkpoint", str(run), "--json", "--precision", "fp32", "--split", "val"]
    assert main(by_dir) == 0
    assert f"{run}: the model in it, best.pt" in caplog.text
    assert json.loads(capsys.readouterr().out) == _eval_json(run / "best.pt", "--split", "val", capsys=capsys)
    assert main([*by_dir[:2], str(run / "best.safetensors"), *by_dir[3:]]) == 2
    err = capsys.readouterr().err
    assert f"{run / 'best.safetensors'} carries no training config" in err and f"give {run / 'best.pt'} or" in err
    # ... else last.pt, scored on the run's held-out images, whose record beside it is honoured.
    import shutil

    copy = shutil.copytree(run, tmp_path / "copy")
    (copy / "best.safetensors").unlink()
    (copy / "best.pt").unlink()
    assert main([*by_dir[:2], str(copy), *by_dir[3:]]) == 0
    assert json.loads(capsys.readouterr().out) == held
    record = json.loads((copy / "held_out.json").read_text())
    (copy / "held_out.json").write_text(json.dumps({**record, "indices": record["indices"][::-1]}))
    assert main([*by_dir[:2], str(copy), *by_dir[3:]]) == 2
    assert "differ from the run's record" in capsys.readouterr().err
    # int8 on the fly of the held-out split: the quantized model carries no run config (as `quantize` returns it),
    # and the split is the run's own all the same (it once read a default config: "trained without data.val_split").
    import dataclasses

    import alexnet.inference.evaluate as evaluate_module

    monkeypatch.setattr(evaluate_module, "_quantized", lambda m, _: dataclasses.replace(m, config=None))
    argv = ["eval", "--checkpoint", str(tmp_path / "run" / "last.pt"), "--json", "--split", "val", "--precision"]
    assert main([*argv, "int8"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 102
    assert (tmp_path / "run" / "confusion.png").stat().st_size > 1000
    assert main(["eval", "--checkpoint", str(tmp_path / "run" / "last.pt"), "--ten-crop"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Acc@1") and "class_3" in out
    # With no view option, eval scores as the run validated: the recipe's mirror TTA, which the weights file records
    # too. Named options give exactly the views named, flagged in the result and scored differently.
    assert result["flip_tta"] is True and result["translate_tta"] == 0 and result["ten_crop"] is False
    args = ["eval", "--checkpoint", str(tmp_path / "run" / "best.safetensors"), "--json", "--precision", "fp32"]
    assert main([*args, "--single-view"]) == 0
    single = json.loads(capsys.readouterr().out)
    assert single["flip_tta"] is False and single["images"] == 256 and single["loss"] != result["loss"]
    assert main([*args, "--no-flip-tta"]) == 0
    assert json.loads(capsys.readouterr().out)["loss"] == single["loss"]
    assert main([*args, "--flip-tta"]) == 0
    flipped = json.loads(capsys.readouterr().out)
    assert flipped["flip_tta"] is True and flipped["loss"] == result["loss"]
    assert main([*args, "--flip-tta", "--translate-tta", "1"]) == 0
    shifted = json.loads(capsys.readouterr().out)
    assert shifted["translate_tta"] == 1 and shifted["loss"] not in (flipped["loss"], single["loss"])
    assert main([*args, "--ten-crop", "--translate-tta", "1"]) == 2
    assert "exclusive" in capsys.readouterr().err
    assert main([*args, "--single-view", "--translate-tta", "1"]) == 2
    assert "exclusive" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:  # argparse's own one line: not allowed with --flip-tta
        main([*args, "--single-view", "--flip-tta"])
    assert exit_.value.code == 2 and "not allowed with" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--recipe", "nope"], "unknown recipe 'nope'"),
        (["train", "--dataset", "mnist", "--data-dir", "/nonexistent", "--set", "data.download=false"], "not found"),
        (["train", "--dataset", "folder", "--data-dir", "/nonexistent"], "needs train/ and val/"),
        (["train", "--set", "optim.lr=fast"], "wrong type"),
        (["train", "--model", "alexnet_2013", "--dataset", "fake"], "unknown model"),
        (["eval", "--checkpoint", "/nonexistent.pt"], "does not exist"),
        # A near miss is named, and nothing is said of the recipe it would have chosen before the refusal.
        (["train", "--dataset", "MNIST"], "data.dataset='MNIST' is not valid; did you mean 'mnist'?"),
        (["train", "--model", "AlexNet_OWT"], "unknown model 'AlexNet_OWT'; did you mean 'alexnet_owt'?"),
        (["train", "--recipe", "cifar-10"], "unknown recipe 'cifar-10'; did you mean 'cifar10'?"),
        (["train", "--set", "optim.schedule=Cosine"], "did you mean 'cosine'?"),
        (["predict", "--weights", "alexnet_owt.imagenet1k_v1", "a.png"], "did you mean 'alexnet_owt.IMAGENET1K_V1'?"),
        (["train", "--set", 'model.overrides.norm="LRN"'], "norm='LRN' is not valid; did you mean 'lrn'? choose"),
        (["train", "--set", 'train.loggers=["tensorbord"]'], "unknown ['tensorbord']; did you mean 'tensorboard'?"),
        # A --resume file that is no checkpoint, once the run's set-up has begun: nothing was said before it.
        (["train", "--dataset", "fake", "--resume", __file__], "is truncated or not a checkpoint"),
    ],
)
def test_errors_are_one_line_and_nonzero(args, message, capsys, caplog, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a train command's default run directory is under ./runs
    with caplog.at_level(logging.INFO, logger="alexnet"):  # in-process, the CLI's log lines land here, not on stderr
        assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and err.startswith("alexnet ")
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]  # the error is the one line


def test_list_recipes(capsys):
    assert main(["train", "--list-recipes"]) == 0
    assert "paper-imagenet" in capsys.readouterr().out


def test_public_api_names_resolve():
    import alexnet

    for name in alexnet.__all__:
        value = getattr(alexnet, name)
        assert callable(value) or name == "__version__", name
    assert alexnet.load_trained.__module__ == "alexnet.artifacts.loader"
    assert alexnet.fit.__module__ == "alexnet.training.fit" and isinstance(alexnet.__version__, str)
    with pytest.raises(AttributeError):
        alexnet.no_such_thing  # noqa: B018


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--dataset", "fake", "-b", "0"], "-b/--batch-size: 0 must be at least 1"),
        (["train", "--dataset", "fake", "-b", "-4"], "-4 must be at least 1"),
        (["train", "--dataset", "fake", "--epochs", "0"], "--epochs: 0 must be at least 1"),
        (["train", "--dataset", "fake", "--limit-train-batches", "0"], "0 must be at least 1"),
        (
            ["train", "--dataset", "fake", "--set", 'data.normalize="meanstdd"'],
            "data.normalize='meanstdd' is not valid",
        ),
        (["train", "--dataset", "fake", "--set", "optim.lr=-1"], "optim.lr=-1.0 is out of range"),
        (["train", "--dataset", "fake", "--set", "data.batch_size=0"], "data.batch_size=0 is out of range"),
        (["train", "--dataset", "fake", "--set", 'optim.schedule="cosin"'], "optim.schedule='cosin' is not valid"),
        (["train", "--set", 'data.dataset="imagenett"'], "data.dataset='imagenett'"),
        (["predict", "--checkpoint", "x.safetensors", "--topk", "-3", "a.png"], "--topk: -3 must be at least 1"),
        (["predict", "--checkpoint", "x.safetensors", "-b", "0", "a.png"], "0 must be at least 1"),
        (["eval", "--checkpoint", "x.safetensors", "-b", "0"], "0 must be at least 1"),
        # refused before the export's work, not by its parity check after it
        (["export", "--checkpoint", "x.safetensors", "--format", "onnx", "--out", "m.onnx", "--atol", "-1"], "-1 must"),
        (
            ["export", "--checkpoint", "x.safetensors", "--format", "onnx", "--out", "m.onnx", "--rtol", "nan"],
            "nan must",
        ),
        (["paper", "fig1", "--target", "-5"], "--target: -5 must be a number above 0"),
        (["paper", "fig1", "--target", "100"], "--target: 100 must be a percentage between 0 and 100"),
        (["paper", "fig1", "--sweep", "0.01,abc"], "--sweep: 'abc' is not a number"),  # was float()'s own words
        (["paper", "fig1", "--sweep", "0.01,-1"], "--sweep: -1 must be a number above 0"),
        (["paper", "fig1", "--max-epochs", "-1"], "--max-epochs: -1 must be at least 1"),
        (["stats", "--dataset", "fake", "-j", "-1"], "--workers: -1 must be at least 0"),  # was DataLoader's words
        (["stats", "--dataset", "fake", "--limit-batches", "0"], "--limit-batches: 0 must be at least 1"),  # "empty"
    ],
)
def test_bad_numbers_and_choices_are_one_line_exit_2(args, message, capsys, caplog):
    with caplog.at_level(logging.INFO, logger="alexnet"), pytest.raises(SystemExit) as exit_info:
        code = main(args)  # argparse's own usage error for flags
        raise SystemExit(code)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]  # in-process, logs land here


# Each command with what it requires, so that only the flag under test is wrong.
_REQUIRED = {
    "predict": ["--weights", "w.safetensors", "a.png"],
    "eval": ["--weights", "w.safetensors"],
    "features": ["--weights", "w.safetensors", "--out", "f.npy", "a.png"],
    "export": ["--weights", "w.safetensors", "--format", "onnx", "--out", "m.onnx"],
    "quantize": ["--weights", "w.safetensors", "--out", "q.pt2"],
    "serve": ["--weights", "w.safetensors"],
    "reproduce": ["--out", "r"],
    "convert-caffe": ["m.caffemodel"],
    "report": ["run"],
    "paper": ["fig1"],
    "stats": ["--dataset", "fake"],
}


def _options_with_values():
    import argparse

    from alexnet.cli import build_parser

    commands = {}
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                nested = [a for a in sub._actions if isinstance(a, argparse._SubParsersAction)]
                for inner in nested[0].choices.items() if nested else [(None, sub)]:
                    commands[f"{name} {inner[0]}" if inner[0] else name] = inner[1]
    for command, sub in commands.items():
        for action in sub._actions:
            if action.option_strings and action.nargs != 0 and action.option_strings[-1] != "--help":
                yield command, tuple(action.option_strings)


@pytest.mark.parametrize(
    ("command", "flags"), list(_options_with_values()), ids=lambda v: "/".join(v) if isinstance(v, tuple) else v
)
def test_an_empty_value_is_one_line_whatever_the_flag(command, flags, capsys, monkeypatch):
    """``--weights "$W"`` with W unset trained from scratch; ``--recipe ""`` took the default recipe, ``--resume ""``
    started over, ``--data-dir ""`` read ./data, without a word; elsewhere "checkpoint . is a directory"."""
    import alexnet.cli as cli

    words = command.split()
    # Let through, the command would run (train the default recipe): here it returns at once, and the test fails.
    monkeypatch.setitem(cli.COMMANDS, words[0], (*cli.COMMANDS[words[0]][:2], lambda args: 99))
    required = list(_REQUIRED.get(command, []))
    if set(flags) & set(required):  # the flag under test is a required one: given once, empty
        at = next(i for i, word in enumerate(required) if word in flags)
        del required[at : at + 2]
    with pytest.raises(SystemExit) as exit_info:
        raise SystemExit(main([*words, *required, flags[-1], ""]))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    named = err.removeprefix(f"alexnet {words[0]}: error: argument ").split(": ")[0]
    assert set(named.split("/")) <= set(flags) and named and len(err.splitlines()) == 1, err
    assert "empty" in err or "''" in err, err  # ours, or the flag's type naming the empty string


def test_an_unwritable_out_fails_before_training(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert main(["train", "--dataset", "fake", "--out", str(blocker / "run"), "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "cannot write the run directory" in err and len(err.strip().splitlines()) == 1


def test_eval_of_a_split_without_some_classes_gives_them_no_accuracy_not_0(tmp_path, capsys):
    """A split that holds no image of a class (here the first batch of a folder, which is in class order) has no
    accuracy for it: null in JSON, "no images" in the table; they said 0.00%, as if every one had been missed."""
    from alexnet.training.fit import fit
    from tests.conftest import make_folder, tiny_config

    root = make_folder(tmp_path / "imgs", classes=("cat", "dog", "eel"), per_class=4)
    folder = ['data.dataset="folder"', f'data.data_dir="{root}"', "data.batch_size=4"]
    fit(tiny_config(tmp_path / "run", *folder, "train.epochs=1"))
    capsys.readouterr()
    args = ["eval", "--weights", str(tmp_path / "run" / "best.safetensors"), "-b", "4", "--limit-val-batches", "1"]
    assert main([*args, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 4 and result["per_class_acc"]["dog"] is None and result["per_class_acc"]["eel"] is None
    assert result["per_class_acc"]["cat"] in (0.0, 25.0, 50.0, 75.0, 100.0)
    assert main(args) == 0
    rows = {line.split()[0]: line.split()[1:] for line in capsys.readouterr().out.splitlines()[1:]}
    assert rows["dog"] == rows["eel"] == ["no", "images"] and rows["cat"][0].endswith("%")


def test_eval_writes_results_before_figures_and_plots_maths_names_as_text(tmp_path, capsys):
    from alexnet.training.fit import fit
    from tests.conftest import make_folder, tiny_config

    root = make_folder(tmp_path / "imgs", classes=("$x^{2", "plain", "a_b$"), per_class=4)
    folder = ['data.dataset="folder"', f'data.data_dir="{root}"', "data.batch_size=4"]  # 12 images: 3 batches
    fit(tiny_config(tmp_path / "run", *folder, "train.epochs=1"))
    capsys.readouterr()
    weights = str(tmp_path / "run" / "best.safetensors")
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "run").iterdir()}
    # No --data-dir: the release weights remember where their folder was.
    assert main(["eval", "--weights", weights, "--json"]) == 0
    # eval reads the run directory and writes nothing into it (its report embeds the run's own confusion.png).
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "run").iterdir()} == before
    capsys.readouterr()
    out_dir = tmp_path / "eval"
    out_dir.write_text("a file")  # refused before any work, in one line
    assert main(["eval", "--weights", weights, "--data-dir", str(root), "--json", "--out", str(out_dir)]) == 2
    captured = capsys.readouterr()
    assert not captured.out and captured.err.strip().endswith(f"{out_dir} is not a directory"), captured
    out_dir.unlink()
    assert main(["eval", "--weights", weights, "--data-dir", str(root), "--json", "--out", str(out_dir)]) == 0
    out = capsys.readouterr().out
    result = json.loads(out.splitlines()[0])
    assert set(result["per_class_acc"]) == {"$x^{2", "plain", "a_b$"}
    assert json.loads((out_dir / "eval.json").read_text())["acc1"] == result["acc1"]
    assert (out_dir / "confusion.png").stat().st_size > 1000  # drawn: the names were not parsed as maths
    # Again into the same directory: its own earlier output, written again. A user's files of those names: kept.
    assert main(["eval", "--weights", weights, "--data-dir", str(root), "--json", "--out", str(out_dir)]) == 0
    capsys.readouterr()
    mine = tmp_path / "mine"
    mine.mkdir()
    for name in ("eval.json", "confusion.png"):
        (mine / name).write_text('{"mine": 1}')
        assert main(["eval", "--weights", weights, "--data-dir", str(root), "--json", "--out", str(mine)]) == 2
        err = capsys.readouterr().err
        assert f"holds {name}, which this command writes" in err and len(err.splitlines()) == 1, err
        assert [p.name for p in mine.iterdir()] == [name] and (mine / name).read_text() == '{"mine": 1}'
        (mine / name).unlink()


@pytest.mark.slow
def test_other_libraries_stay_quiet_at_the_default_level(tmp_path, image_folder):
    """onnxscript's optimizer lines on export, inductor's autotune tables and its no-CUDA warning on quantize,
    torchao's on loading a .pt2, and torch's profiler's C++ lines on bench --profile reach stderr only with -v."""
    from tests.conftest import make_weights

    weights = make_weights(tmp_path / "m.safetensors")
    cli = [sys.executable, "-m", "alexnet.cli"]
    commands = [
        ["export", "--weights", str(weights), "--format", "onnx", "--out", str(tmp_path / "m.onnx")],
        ["quantize", "--weights", str(weights), "--out", str(tmp_path / "q.pt2"), "--calibration", "64"],
        ["predict", "--weights", str(tmp_path / "q.pt2"), str(image_folder / "val")],
        ["bench", "--profile", "alexnet_small", "--batch-size", "8", "--device", "cpu"],
    ]
    env = {k: v for k, v in os.environ.items() if k != "KINETO_LOG_LEVEL"}
    # A cache of this test's own: `quantize` compiles whatever another test kept of the same model (its lines are
    # what this checks), and `predict` then takes the program kept by `quantize`.
    env["ALEXNET_PROGRAM_CACHE"] = str(tmp_path / "programs")
    for words in commands:
        done = subprocess.run([*cli, *words], capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
        assert done.returncode == 0, done.stderr
        assert done.stderr == "", (words[0], done.stderr[:2000])
    assert len(list((tmp_path / "programs").glob("*.pt2"))) == 1  # compiled here, once
    # The same lines are there for whoever asks.
    for words, line in ((commands[0], "onnx"), (commands[-1], "profiler_start")):
        loud = subprocess.run([*cli, "-v", *words], capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
        assert loud.returncode == 0 and line in loud.stderr, (words[0], loud.stderr[:2000])


@pytest.mark.parametrize(
    "args",
    [
        ["export", "--out", "m.onnx"],
        ["quantize", "--out", "m.pt2"],
        ["features", "x.png", "--out", "f.npy"],
        ["train", "--out", "runs/x"],
    ],
)
def test_a_command_of_one_model_refuses_two_rather_than_run_the_last(args, capsys, tmp_path, monkeypatch):
    """argparse's store keeps the last of a repeated flag: `serve --weights A --weights B` would serve B, quietly.
    (`predict` takes one --weights a model, `eval` and `serve` any number, as one ensemble.)"""
    monkeypatch.chdir(tmp_path)
    second = "--weights" if args[0] == "train" else "--checkpoint"  # the same flag under its other name
    with pytest.raises(SystemExit) as exit_:
        main([*args, "--weights", "a.safetensors", second, "b.safetensors"])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(err.splitlines()) == 1 and f"{second} given twice" in err
    assert not any(tmp_path.iterdir())  # nothing written


def test_a_reader_that_stops_early_ends_the_command_quietly(tmp_path, image_folder):
    """`alexnet predict DIR | head -1`: the pipe closes before the output is written; the command ends with
    128 + SIGPIPE, as a Unix tool killed by it would, and no traceback."""
    import signal

    from tests.conftest import make_weights

    weights = make_weights(tmp_path / "m.safetensors")
    argv = [sys.executable, "-m", "alexnet.cli", "predict", "--weights", str(weights), str(image_folder / "val")]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # the reader is gone before the first line
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 128 + signal.SIGPIPE, err
    assert "Traceback" not in err and "Exception ignored" not in err, err


@pytest.mark.parametrize(
    "argv, target, says",
    [
        (["train", "--out", "runs/x"], "alexnet.training.fit.fit", "continue with --resume auto --out runs/x"),
        (["paper", "fig1"], "alexnet.experiments.paper.figure1", "continue with the same command and --resume auto"),
        (["demo"], "alexnet.experiments.demo.run_demo", "run the same command again to continue"),
        (
            ["reproduce", "--out", "r"],
            "alexnet.experiments.reproduce.reproduce",
            "run the same command again to continue",
        ),
    ],
)
def test_an_interrupted_run_is_told_how_its_own_command_continues_it(argv, target, says, capsys, monkeypatch):
    # `paper fig1` trains a run a rate under its --out, and demo and reproduce take theirs up by themselves: the
    # advice `train` gives (--resume auto --out RUN) would be refused by the first and wrong for the others.
    from alexnet.errors import TrainingInterrupted

    def stopped(*args, **kwargs):
        raise TrainingInterrupted("stopped by SIGINT at epoch 2, batch 5; saved runs/x/last.pt", 2, "runs/x")

    monkeypatch.setattr(target, stopped)
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert err == f"alexnet {argv[0]}: error: stopped by SIGINT at epoch 2, batch 5; saved runs/x/last.pt: {says}\n"


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["paper", "fig3", "--batch-size", "4"], "alexnet paper: error: unrecognized arguments: --batch-size 4"),
        (["train", "--bogus", "1"], "alexnet train: error: unrecognized arguments: --bogus 1 (see alexnet train"),
        (["predict", "--weights", "w", "x.png", "--nope"], "(see alexnet predict --help)"),
        # before the command, the top level's (it was train's, whose usage does not list -v and --version)
        (["--bogus", "train", "--dataset", "fake"], "alexnet: error: unrecognized arguments: --bogus (see alexnet"),
    ],
)
def test_a_flag_a_command_lacks_is_named_by_that_command(argv, line, capsys, tmp_path, monkeypatch):
    """`alexnet paper fig3 --batch-size 4` said `alexnet: error: ... (see alexnet --help)`: the top level's usage,
    which lists the commands, not the flags the command does take."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(err.splitlines()) == 1 and line in err, err
    assert not any(tmp_path.iterdir())


def test_sigterm_cleans_up_as_ctrl_c_does(tmp_path):
    """`kill`, `timeout` or a container stopping send SIGTERM, whose default action ended the process where it was:
    an export killed after writing its staged file left it beside the target (244 MB for alexnet_owt's ONNX).
    Now the command stops as on Ctrl-C: its cleanup runs, one line, status 128 + 15, the previous export kept."""
    from tests.conftest import make_weights

    weights = make_weights(tmp_path / "m.safetensors")
    out = tmp_path / "out" / "m.pt2"
    out.parent.mkdir()
    out.write_bytes(b"the previous export")
    # SIGTERM arrives while the staged program is checked against eager (written, not yet moved into place).
    script = (
        "import os, signal, sys\n"
        "from alexnet.inference import export\n"
        "real = export.parity\n"
        "def parity(*args):\n"
        "    assert any(p.name.endswith('.staged.pt2') for p in os.scandir(os.path.dirname(sys.argv[2])))\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    return real(*args)\n"
        "export.parity = parity\n"
        "from alexnet.cli import main\n"
        "sys.exit(main(['export', '--weights', sys.argv[1], '--format', 'exported-program', '--out', sys.argv[2]]))\n"
    )
    argv = [sys.executable, "-c", script, str(weights), str(out)]
    done = subprocess.run(argv, capture_output=True, text=True, preexec_fn=child_signals())
    assert done.returncode == 128 + signal.SIGTERM and done.stderr == "terminated\n", done.stderr[-2000:]
    assert os.listdir(out.parent) == ["m.pt2"] and out.read_bytes() == b"the previous export"
    # A SIGTERM its caller ignores stays ignored: the export finishes and replaces the previous one.
    ignoring = subprocess.run(
        [sys.executable, "-c", script, str(weights), str(out)],
        capture_output=True,
        text=True,
        preexec_fn=child_signals((signal.SIGTERM,)),
    )
    assert ignoring.returncode == 0 and os.listdir(out.parent) == ["m.pt2"], ignoring.stderr[-2000:]
    assert out.read_bytes() != b"the previous export"


def test_names_that_hold_a_terminals_escapes_are_printed_as_text(tmp_path):
    """A file named `\\x1b]0;pwned\\x07bad.png` retitled the terminal through `features`' error line, and any path
    in an error or a log line reached the terminal as it was. Control characters are shown as `\\xNN` there too, as
    class names always were; nothing else about the line changes."""
    from PIL import Image

    from tests.conftest import make_weights

    weights = make_weights(tmp_path / "m.safetensors")
    images = tmp_path / "imgs"
    images.mkdir()
    Image.new("RGB", (40, 40), (1, 2, 3)).save(images / "good.png")
    (images / "\x1b]0;pwned\x07bad.png").write_bytes(b"not an image")
    cli = [sys.executable, "-m", "alexnet.cli"]
    out = str(tmp_path / "f.npy")
    features = subprocess.run([*cli, "features", "--weights", str(weights), str(images), "--out", out], **_TEXT)
    assert features.returncode == 1 and "\\x1b]0;pwned\\x07bad.png: not a decodable image" in features.stderr
    # An error line and a log line of any command (one made to log and fail so here).
    script = (
        "import logging, sys\n"
        "import alexnet.cli as cli\n"
        "from alexnet.errors import AlexNetError\n"
        "def run(args):\n"
        "    logging.getLogger('alexnet.x').warning('skipping %s', '\\x1b[2Jgone.png')\n"
        "    logging.getLogger('other').warning('a table:\\n\\tits row')\n"
        "    raise AlexNetError('cannot read \\x1b]0;t\\x07.png')\n"
        "cli.COMMANDS['models'] = (*cli.COMMANDS['models'][:2], run)\n"
        "sys.exit(cli.main(['models']))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], **_TEXT)
    assert done.returncode == 2 and done.stderr.splitlines() == [
        "skipping \\x1b[2Jgone.png",
        "a table:",  # another library's lines and tabs stay as they are
        "\tits row",
        "alexnet models: error: cannot read \\x1b]0;t\\x07.png",
    ]
    assert "\x1b" not in features.stderr + done.stderr


_TEXT = {"capture_output": True, "text": True, "timeout": 300}


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs Linux's /dev/full (every write: no space left)")
def test_output_to_a_full_disk_is_one_line(tmp_path):
    """`alexnet predict DIR > preds.txt` on a full disk ended in a traceback from print."""
    from PIL import Image

    from tests.conftest import make_weights

    weights = make_weights(tmp_path / "m.safetensors")
    Image.new("RGB", (32, 32)).save(tmp_path / "x.png")
    for argv in (
        ["models"],
        ["parallel-plan", "--json"],
        ["predict", "--weights", str(weights), str(tmp_path / "x.png")],
    ):
        with open("/dev/full", "w") as full:
            done = subprocess.run(
                [sys.executable, "-m", "alexnet.cli", *argv], stdout=full, stderr=subprocess.PIPE, text=True
            )
        assert done.returncode == 2, done.stderr
        assert done.stderr == f"alexnet {argv[0]}: error: could not write its output: No space left on device\n"


def test_the_top_level_help_states_the_shared_flags_rule_as_plain_text(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "--weights NAME|PATH names a trained model everywhere" in " ".join(out.split())
    assert "``" not in out and "The flags several commands share" not in out  # the docstring's markup and heading


@pytest.mark.parametrize(
    ("argv", "recipe", "dataset"),
    [
        (["--dataset", "mnist"], "mnist", "mnist"),  # the fashion-mnist recipe would mirror its digits
        (["--dataset", "cifar10"], "cifar10", "cifar10"),
        (["--dataset", "cifar100"], "cifar10", "cifar100"),  # the same 32 px images: not cut to 28 px
        (["--dataset", "imagenet"], "paper-imagenet", "imagenet"),
        (["--dataset", "fake"], "fashion-mnist", "fake"),  # no recipe of its own: the default
        ([], "fashion-mnist", "fashion-mnist"),
        (["--dataset", "mnist", "--recipe", "fashion-mnist"], "fashion-mnist", "mnist"),  # named: as named
        (["--set", 'data.dataset="mnist"'], "mnist", "mnist"),  # the data set named the other way
    ],
)
def test_train_without_a_recipe_takes_the_data_sets_own(argv, recipe, dataset, monkeypatch):
    seen = []

    class Stop(Exception):
        pass

    def fit(cfg, *args, **kwargs):
        seen.append(cfg)
        raise Stop

    monkeypatch.setattr("alexnet.training.fit.fit", fit)
    with pytest.raises(Stop):
        main(["train", *argv])
    assert (seen[0].recipe, seen[0].data.dataset) == (recipe, dataset)  # training's first line names the recipe


def test_the_systems_file_errors_are_said_as_path_and_reason(monkeypatch, capsys):
    """A folder the system will not make (``paper fig3 RUN --out /proc/x``) was ``[Errno 2] No such file or directory:
    '/proc/x'``; ours (``... does not exist``) carry no file name and are said as written."""
    import alexnet.cli as cli

    def failing(error):
        def run(args):
            raise error

        monkeypatch.setitem(cli.COMMANDS, "models", (*cli.COMMANDS["models"][:2], run))
        assert main(["models"]) == 2
        return capsys.readouterr().err.strip()

    assert failing(FileNotFoundError(2, "No such file or directory", "/proc/x")) == (
        "alexnet models: error: /proc/x: No such file or directory"
    )
    assert (
        failing(FileNotFoundError("weights w.pt does not exist"))
        == "alexnet models: error: weights w.pt does not exist"
    )
