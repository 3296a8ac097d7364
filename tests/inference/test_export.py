"""Export to every format, for every variant, with a parity check; ONNX files work in `alexnet predict`."""

import json

import pytest

import alexnet
from alexnet.cli import main
from alexnet.inference.artifact import load_trained
from alexnet.inference.export import FORMATS, export_model
from alexnet.inference.predictor import Predictor
from tests.conftest import make_weights
from tests.inference.test_predictor import _images


@pytest.mark.parametrize("name", alexnet.list_models())
@pytest.mark.parametrize("fmt", FORMATS)
def test_export_parity_every_variant(tmp_path, name, fmt):
    weights = make_weights(tmp_path / f"{name}.safetensors", name=name, num_classes=5, width=0.25)
    result = export_model(load_trained(weights), fmt, tmp_path / f"model.{fmt}")
    assert result.parity.ok and result.parity.max_abs <= 1e-4
    assert result.path.stat().st_size > 10_000


def test_cli_export_and_onnx_predict_matches_pytorch(tmp_path, weights, capsys):
    out = tmp_path / "m.onnx"
    assert main(["export", "--checkpoint", str(weights), "--format", "onnx", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "max |onnx - eager| over logits on the first 8 fake test images" in printed and "fixed at 32" in printed
    paths = _images(tmp_path / "imgs")
    torch_preds = Predictor.from_path(weights).predict(paths)
    onnx_preds = Predictor.from_path(out).predict(paths)
    for a, b in zip(torch_preds, onnx_preds):
        assert [lbl for lbl, _ in a.topk] == [lbl for lbl, _ in b.topk]
        assert max(abs(pa - pb) for (_, pa), (_, pb) in zip(a.topk, b.topk)) < 1e-4
    assert main(["predict", "--checkpoint", str(out), "--json", str(paths[0])]) == 0
    assert "topk" in json.loads(capsys.readouterr().out)
    pt2 = tmp_path / "m.pt2"
    assert main(["export", "--checkpoint", str(weights), "--format", "exported-program", "--out", str(pt2),
                 "--images", str(tmp_path / "imgs")]) == 0  # fmt: skip
    assert "on 4 given images (4, 3, 32, 32)" in capsys.readouterr().out


def test_export_errors(tmp_path, weights, capsys):
    assert main(["export", "--checkpoint", str(tmp_path / "none.safetensors"), "--format", "onnx",
                 "--out", str(tmp_path / "x.onnx")]) == 2  # fmt: skip
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "fake.onnx").write_bytes(b"not onnx")
    image = _images(tmp_path / "imgs")[0]
    assert main(["predict", "--checkpoint", str(tmp_path / "fake.onnx"), str(image)]) == 2
    assert "not a loadable ONNX model" in capsys.readouterr().err
