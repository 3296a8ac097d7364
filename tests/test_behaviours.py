"""Behaviours that had no test: optimizer and schedule options end to end, resume under the plateau and one-cycle
schedules, the default precision, pixel_scale=255, eval/predict/export options, stats on a folder, the demo, -v."""

import csv
import json
import warnings

import pytest
import torch

from alexnet.artifacts.checkpoint import load_checkpoint
from alexnet.cli import main
from alexnet.training.fit import fit
from tests.conftest import make_folder, tiny_config

FAST = ["train.epochs=2", "train.limit_train_batches=4", "train.limit_val_batches=1"]
LEARN = ["train.epochs=3", "train.limit_train_batches=6", "train.limit_val_batches=1"]


@pytest.mark.parametrize(
    "options",
    [
        ['optim.name="adamw"', "optim.lr=0.002"],
        ["optim.nesterov=true", "optim.bias_decay=false"],
        ['optim.schedule="step"', "optim.step_size=1", "optim.gamma=0.5"],
        ["optim.warmup_epochs=1", 'optim.schedule="cosine"'],
        ["optim.label_smoothing=0.1", "optim.clip_grad_norm=1.0"],
        ["data.pixel_scale=255", 'data.normalize="mean"', "optim.lr=0.005"],
    ],
    ids=["adamw", "nesterov-no-bias-decay", "step", "warmup-cosine", "smoothing-clipping", "pixel-scale-255"],
)
def test_options_train_and_learn(tmp_path, options):
    result = fit(tiny_config(tmp_path / "run", *LEARN, *options))
    losses = [r["train_loss"] for r in result.history]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]  # it trains, and learns


def test_step_schedule_and_warmup_set_the_rates_they_promise(tmp_path):
    step = fit(tiny_config(tmp_path / "a", *FAST, 'optim.schedule="step"', "optim.step_size=1", "optim.gamma=0.5"))
    assert [r["lr"] for r in step.history] == pytest.approx([0.02, 0.01])  # halved from the second epoch on
    state = load_checkpoint(tmp_path / "a" / "last.pt")
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.01)
    warm = fit(tiny_config(tmp_path / "w", *FAST, "optim.warmup_epochs=2", 'optim.schedule="constant"'))
    assert warm.history[0]["lr"] < 0.02 and warm.history[1]["lr"] == pytest.approx(0.02)  # linear warm-up


@pytest.mark.parametrize("schedule", ["plateau", "onecycle"])
def test_resume_is_bitwise_under_the_plateau_and_one_cycle_schedules(tmp_path, schedule):
    opts = [
        f'optim.schedule="{schedule}"',
        "train.limit_train_batches=4",
        "train.limit_val_batches=1",
        "optim.plateau_patience=0",
    ]
    fit(tiny_config(tmp_path / "a", "train.epochs=3", *opts))
    # Interrupted after epoch 1 of the same 3-epoch run (the one-cycle shape depends on the run's length).
    fit(tiny_config(tmp_path / "b", "train.epochs=3", "train.stop_at_train_acc1=0", *opts))
    fit(tiny_config(tmp_path / "b", "train.epochs=3", 'train.resume="auto"', *opts))
    a, b = load_checkpoint(tmp_path / "a" / "last.pt"), load_checkpoint(tmp_path / "b" / "last.pt")
    assert a["schedule"] == b["schedule"]
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key


def test_the_default_precision_trains(tmp_path):
    """`auto`: bf16 autocast where the CPU has native bf16 (AVX512-BF16, AMX), else fp32 (an AVX2-only CPU); every
    other test pins fp32."""
    from alexnet.device import pick_precision

    result = fit(tiny_config(tmp_path / "run", *LEARN, 'train.precision="auto"'))
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    chosen = pick_precision("auto", torch.device("cpu"))
    assert chosen in ("bf16", "fp32")


def test_auto_picks_native_bf16_only_and_an_emulated_bf16_asked_for_is_warned_of(monkeypatch, caplog):
    import logging

    from alexnet.device import pick_precision

    cpu = torch.device("cpu")
    for native in (True, False):
        monkeypatch.setattr("alexnet.device.cpu_has_fast_bf16", lambda native=native: native)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="alexnet"):
            assert pick_precision("auto", cpu) == ("bf16" if native else "fp32")
            assert pick_precision("bf16", cpu) == "bf16"  # asked for: given, but not silently
        assert ("emulated" in caplog.text) == (not native), caplog.text


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("opts") / "run"
    fit(tiny_config(out, *FAST))
    return out


def test_eval_and_predict_options(trained, tmp_path, capsys):
    from PIL import Image

    assert (
        main(
            [
                "eval",
                "--checkpoint",
                str(trained / "last.pt"),
                "--ten-crop",
                "--device",
                "cpu",
                "--json",
                "--precision",
                "fp32",
                "--out-dir",
                str(tmp_path),
            ]
        )
        == 0
    )
    ten = json.loads(capsys.readouterr().out.splitlines()[0])
    assert ten["ten_crop"] is True and ten["images"] == 256 and (tmp_path / "confusion.png").is_file()
    Image.new("RGB", (40, 40), (200, 30, 60)).save(tmp_path / "a.png")
    for extra in (["--ten-crop"], ["--device", "cpu"], []):
        assert (
            main(["predict", "--checkpoint", str(trained / "last.pt"), "--json", *extra, str(tmp_path / "a.png")]) == 0
        )
        assert len(json.loads(capsys.readouterr().out)["topk"]) == 5


def test_eval_on_a_data_set_with_other_classes_is_refused(trained, tmp_path, capsys):
    root = make_folder(tmp_path / "imgs", classes=("cat", "dog"), per_class=2)
    assert main(["eval", "--checkpoint", str(trained / "last.pt"), "--dataset", "folder", "--data-dir", str(root)]) == 2
    assert "was trained on 10 classes" in capsys.readouterr().err


def test_export_torchscript_through_the_cli(trained, tmp_path, capsys):
    out = tmp_path / "m.pt"
    assert (
        main(
            ["export", "--checkpoint", str(trained / "best.safetensors"), "--format", "torchscript", "--out", str(out)]
        )
        == 0
    )
    with warnings.catch_warnings():  # PyTorch deprecates TorchScript; the export exists for old deployments
        warnings.simplefilter("ignore", FutureWarning)
        loaded = torch.jit.load(str(out))
    assert loaded(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_stats_on_a_folder(tmp_path, capsys):
    root = make_folder(tmp_path / "imgs", per_class=3)
    assert main(["stats", "--dataset", "folder", "--data-dir", str(root), "--resize", "20", "-j", "0"]) == 0
    captured = capsys.readouterr()
    stats = json.loads(captured.out)
    assert len(stats["mean"]) == 3 and len(stats["pca_eigvec"]) == 3
    assert "--set 'data.pca_eigvec=" in captured.err  # pasteable: quoted for the shell


def test_demo_with_a_tiny_limit(tmp_path, fashion_dir, capsys):
    args = [
        "demo",
        "--out",
        str(tmp_path / "demo"),
        "--set",
        f'data.data_dir="{fashion_dir}"',
        "--set",
        "train.epochs=1",
        "--set",
        "train.limit_train_batches=2",
        "--set",
        "train.progress=false",
    ]
    assert main(args) == 0
    assert "report:" in capsys.readouterr().out and (tmp_path / "demo" / "report.md").is_file()
    # The reported figures are the final epoch's, never the best-on-the-test-split epoch's.
    report = (tmp_path / "demo" / "report.md").read_text()
    assert "last.pt (the final epoch" in report
    # ...scored with the recipe's test-time views (flip TTA), as the run scored its test split: the two agree.
    assert "| test-time views | the image, its mirror, softmax averaged |" in report
    with open(tmp_path / "demo" / "metrics.csv") as f:
        last = list(csv.DictReader(f))[-1]
    assert f"**{float(last['test_acc1']):.2f}%**" in report and f"loss {float(last['test_loss']):.4f}" in report
    # `make demo` twice: the finished run is reported again, not trained again and not refused.
    checkpoint = (tmp_path / "demo" / "last.pt").read_bytes()
    assert main(args) == 0
    assert (tmp_path / "demo" / "last.pt").read_bytes() == checkpoint
    again = (tmp_path / "demo" / "report.md").read_text()
    timeless = [line for line in report.splitlines() if "wall time" not in line]
    assert [line for line in again.splitlines() if "wall time" not in line] == timeless
    # A changed setting is refused, naming the flag the demo takes to allow it; with the flag the run is taken up.
    changed = [*args, "--set", "optim.lr=0.01"]
    assert main(changed) == 2 and "--allow-changes" in capsys.readouterr().err
    assert main([*changed, "--allow-changes"]) == 0
    # A run of another recipe in its directory is refused with one line, and left as it was.
    other = [*args[:2], str(tmp_path / "other"), *args[3:]]
    assert main(["train", "--dataset", "fake", "--out", str(tmp_path / "other"), "--epochs", "1"]) == 0
    capsys.readouterr()
    assert main(other) == 2
    assert "Traceback" not in (err := capsys.readouterr().err) and len(err.strip().splitlines()) == 1, err


def test_verbose_shows_the_traceback(tmp_path):
    with pytest.raises(Exception, match="unknown recipe"):
        main(["-v", "train", "--recipe", "nope"])


def test_paper_fig1_sweep_through_the_cli(tmp_path, capsys):
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
        "--sweep",
        "0.01,0.02",
        "--set",
        "train.limit_train_batches=2",
        "--set",
        "train.limit_val_batches=1",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.count("relu  lr") == 2 and out.count("tanh  lr") == 2
