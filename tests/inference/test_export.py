"""Export to every format, for every variant, with a parity check; ONNX files work in `alexnet predict`."""

import json

import pytest
import torch

import alexnet
from alexnet.artifacts.loader import load_trained
from alexnet.cli import main
from alexnet.inference.export import FORMATS, export_model
from alexnet.inference.predictor import Predictor
from tests.conftest import make_weights
from tests.helpers import mixed_images


@pytest.mark.parametrize("name", alexnet.list_models())
@pytest.mark.parametrize("fmt", FORMATS)
def test_export_parity_every_variant(tmp_path, name, fmt):
    weights = make_weights(tmp_path / f"{name}.safetensors", name=name, num_classes=5, width=0.25)
    suffix = {"onnx": ".onnx", "torchscript": ".ts", "exported-program": ".pt2"}[fmt]
    result = export_model(load_trained(weights), fmt, tmp_path / f"model{suffix}")
    assert result.parity.ok and result.parity.max_abs <= 1e-4
    assert result.path.stat().st_size > 10_000


@pytest.mark.parametrize("fmt", ["onnx", "exported-program"])
def test_the_same_model_exports_to_the_same_bytes(tmp_path, weights, fmt):
    """Reproducible artifacts: a user (or a release's checksum) can tell a changed export from a rebuilt one.
    (TorchScript too, from one process to the next; within a process it numbers each trace's class names anew.)"""
    suffix = {"onnx": ".onnx", "torchscript": ".ts", "exported-program": ".pt2"}[fmt]
    first, again = (export_model(load_trained(weights), fmt, tmp_path / f"{n}{suffix}").path for n in ("a", "b"))
    assert first.read_bytes() == again.read_bytes()


def test_cli_export_and_onnx_predict_matches_pytorch(tmp_path, weights, capsys):
    out = tmp_path / "m.onnx"
    assert main(["export", "--checkpoint", str(weights), "--format", "onnx", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "max |onnx - eager| over logits on the first 8 fake test images" in printed and "fixed at 32" in printed
    paths = mixed_images(tmp_path / "imgs")
    torch_preds = Predictor.from_path(weights).predict(paths)
    onnx_preds = Predictor.from_path(out).predict(paths)
    for a, b in zip(torch_preds, onnx_preds):
        assert [lbl for lbl, _ in a.topk] == [lbl for lbl, _ in b.topk]
        assert max(abs(pa - pb) for (_, pa), (_, pb) in zip(a.topk, b.topk)) < 1e-4
    assert main(["predict", "--checkpoint", str(out), "--json", str(paths[0])]) == 0
    assert "topk" in json.loads(capsys.readouterr().out)
    pt2 = tmp_path / "m.pt2"
    assert (
        main(
            [
                "export",
                "--checkpoint",
                str(weights),
                "--format",
                "exported-program",
                "--out",
                str(pt2),
                "--images",
                str(tmp_path / "imgs"),
            ]
        )
        == 0
    )
    assert "on 4 given images (4, 3, 32, 32)" in capsys.readouterr().out


def test_export_errors(tmp_path, weights, capsys):
    assert (
        main(
            [
                "export",
                "--checkpoint",
                str(tmp_path / "none.safetensors"),
                "--format",
                "onnx",
                "--out",
                str(tmp_path / "x.onnx"),
            ]
        )
        == 2
    )
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "fake.onnx").write_bytes(b"not onnx")
    image = mixed_images(tmp_path / "imgs")[0]
    assert main(["predict", "--checkpoint", str(tmp_path / "fake.onnx"), str(image)]) == 2
    assert "not a loadable ONNX model" in capsys.readouterr().err


def _trained_scale(tmp_path):
    """Weights whose logits have a trained model's magnitude (~10-40), where float32 summation order shows."""
    from alexnet.artifacts.checkpoint import load_weights, save_weights

    path = make_weights(tmp_path / "big.safetensors", num_classes=10)
    trained = load_trained(path)
    with torch.no_grad():
        trained.model.classifier[-1].weight.mul_(300)
    _, meta = load_weights(path)
    save_weights(trained.model, path, meta)
    return path


def test_trained_scale_logits_pass_and_the_refusal_path_works(tmp_path, capsys):
    path = _trained_scale(tmp_path)
    trained = load_trained(path)
    logits = trained.model(torch.randn(4, 3, 32, 32))
    assert logits.abs().max() > 5  # the regime where an absolute 1e-4 stops being a principled bar
    out = tmp_path / "m.onnx"
    assert main(["export", "--checkpoint", str(path), "--format", "onnx", "--out", str(out)]) == 0
    assert "top-1 agreement 100%" in capsys.readouterr().out
    good = out.read_bytes()
    strict = ["export", "--checkpoint", str(path), "--format", "onnx", "--out", str(out), "--atol", "0", "--rtol", "0"]
    assert main(strict) == 2  # an exact match is not what two kernel libraries give
    err = capsys.readouterr().err
    # The failed export never replaced the good one, and left no staged file behind.
    assert "not trusted" in err and "left as it was" in err and out.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_a_wrong_export_fails_the_parity_check(tmp_path):
    """One weight changed between the eager model and the export: the check must catch it."""
    from alexnet.inference.export import parity

    trained = load_trained(_trained_scale(tmp_path))
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        expected = trained.model(x)
        trained.model.features[0].weight[0, 0, 0, 0] += 0.5
        wrong = trained.model(x)
        assert parity(expected, expected + 1e-6).ok
        assert not parity(expected, wrong).ok


def test_every_format_export_writes_is_loaded_or_refused_by_name(tmp_path, weights, capsys):
    """ONNX and .pt2 exports predict like the weights; a TorchScript export (which runs its program when loaded)
    is refused by name, not reported as a truncated checkpoint."""
    assert main(["predict", "--weights", str(weights), *map(str, mixed_images(tmp_path / "imgs")), "--json"]) == 0
    expected = [json.loads(line)["topk"][0]["label"] for line in capsys.readouterr().out.splitlines()]
    for fmt, name in (("onnx", "m.onnx"), ("exported-program", "m.pt2"), ("torchscript", "m.ts.pt")):
        out = tmp_path / name
        assert main(["export", "--weights", str(weights), "--format", fmt, "--out", str(out)]) == 0
        capsys.readouterr()
        code = main(["predict", "--weights", str(out), *map(str, sorted((tmp_path / "imgs").iterdir())), "--json"])
        captured = capsys.readouterr()
        if fmt == "torchscript":
            assert code == 2 and "is a TorchScript export" in captured.err and "truncated" not in captured.err
            assert len(captured.err.strip().splitlines()) == 1
        else:
            assert code == 0, captured.err
            got = [json.loads(line)["topk"][0]["label"] for line in captured.out.splitlines()]
            assert got == expected, fmt


def test_an_export_removes_what_a_killed_export_to_the_same_file_left(tmp_path, weights):
    """SIGKILL (the out-of-memory killer) runs no cleanup: the staged file and its temporary stay, hidden, an
    export's size each. The next export to that file removes those of processes that are gone and keeps a live
    process's and anything not named so."""
    import os

    from alexnet.files import process_tag

    host = process_tag().split("@")[1]
    gone = f"{_a_finished_pid()}@{host}"
    out = tmp_path / "m.pt2"
    left = [tmp_path / f".m.{gone}.staged.pt2", tmp_path / f"..m.{gone}.staged.pt2.{gone}.k3x_9q.tmp"]
    kept = [
        tmp_path / f".m.{os.getppid()}@{host}.staged.pt2",  # a live process's export under way
        tmp_path / f".m.{_a_finished_pid()}@other-node.staged.pt2",  # another machine's, on a shared disk
        tmp_path / f".other.{gone}.staged.pt2",  # another target's
        tmp_path / f".m.{gone}.staged.onnx",  # another format's
        tmp_path / ".m.notes.staged.pt2",  # no tag: not one of ours
    ]
    for path in left + kept:
        path.write_bytes(b"x" * 100)
    export_model(load_trained(weights), "exported-program", out)
    assert out.exists() and not any(p.exists() for p in left) and all(p.exists() for p in kept)


def _a_finished_pid() -> int:
    import subprocess

    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid
