"""Several trained models scored as one (the paper's five CNNs): the softmax averaged over them, only where they
read the same images the same way."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from alexnet.artifacts.checkpoint import read_weights_meta, save_weights
from alexnet.artifacts.loader import load_trained
from alexnet.cli import main
from alexnet.errors import ConfigError, IncompatibleCheckpointError
from alexnet.inference.ensemble import Ensemble, check_members
from alexnet.inference.evaluate import evaluate_checkpoint
from alexnet.training.fit import fit

from ..conftest import tiny_config

KW = {"device": "cpu", "precision": "fp32", "progress": False}


class Fixed(nn.Module):
    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(x.shape[0], -1)


def test_the_output_is_the_log_of_the_members_softmax_averaged():
    a, b = torch.tensor([[2.0, 0.0, 0.0]]), torch.tensor([[-3.0, 1.0, 1.5]])
    x = torch.zeros(2, 1)
    out = Ensemble([Fixed(a), Fixed(b)])(x)
    want = (a.softmax(1) + b.softmax(1)) / 2
    assert out.shape == (2, 3)
    torch.testing.assert_close(out.softmax(1), want.expand(2, -1))
    torch.testing.assert_close(out.exp().sum(1), torch.ones(2))  # log-probabilities already
    # Averaging probabilities is not averaging logits: here they pick different classes.
    assert out.argmax(1).tolist() == [0, 0] and (a + b).argmax(1).item() == 2
    torch.testing.assert_close(Ensemble([Fixed(b)])(x), b.log_softmax(1).expand(2, -1))
    with pytest.raises(ValueError, match="at least one"):
        Ensemble([])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ensemble")
    outs = []
    for seed in (0, 1):
        out = root / f"run{seed}"
        fit(
            tiny_config(
                out, "data.val_split=0.2", "train.epochs=1", "train.limit_train_batches=6", f"train.seed={seed}"
            )
        )
        outs.append(out)
    return outs


def test_two_models_score_as_their_averaged_softmax(runs):
    a, b = (out / "last.pt" for out in runs)
    one, other = evaluate_checkpoint(a, **KW), evaluate_checkpoint(b, **KW)
    assert one.loss != other.loss  # two seeds, two models
    # A model averaged with itself is the model.
    same = evaluate_checkpoint([a, a], **KW)
    assert same.loss == pytest.approx(one.loss, abs=1e-5) and same.acc1 == one.acc1
    both = evaluate_checkpoint([a, b], **KW)
    # −log of an average of probabilities is at most the average of −logs (Jensen), strictly for two different
    # models; and the order of the members does not matter.
    assert both.loss < (one.loss + other.loss) / 2 - 1e-4
    assert both.loss == pytest.approx(evaluate_checkpoint([b, a], **KW).loss, abs=1e-5)
    assert both.images == one.images == 256
    held = evaluate_checkpoint([a, b], split="val", **KW)  # both held out the same images
    assert held.images == round(0.2 * 1024)


def test_models_that_read_images_differently_are_refused(runs, tmp_path):
    a, b = runs[0] / "best.safetensors", runs[1] / "best.safetensors"
    model = load_trained(b).model

    def resaved(name, change):
        meta = read_weights_meta(b)
        change(meta)
        save_weights(model, tmp_path / name, meta)
        return tmp_path / name

    relabelled = resaved("classes.safetensors", lambda m: m["classes"].reverse())
    with pytest.raises(IncompatibleCheckpointError, match="classes"):
        evaluate_checkpoint([a, relabelled], **KW)
    shifted = resaved("mean.safetensors", lambda m: m["data"].update(mean=[0.1, 0.2, 0.3]))
    with pytest.raises(IncompatibleCheckpointError, match="preprocesses images differently .*mean"):
        evaluate_checkpoint([a, shifted], **KW)
    # A model validated with other views: its views must be named, and named they apply to all.
    flipped = resaved(
        "views.safetensors",
        lambda m: m["provenance"].update(eval_views={"ten_crop": False, "flip": True, "translate": 0}),
    )
    assert load_trained(a).eval_views["flip"] is False
    with pytest.raises(ConfigError, match="different test-time views"):
        evaluate_checkpoint([a, flipped], **KW)
    assert evaluate_checkpoint([a, flipped], flip=True, **KW).views["flip"] is True


def test_a_held_out_score_needs_the_same_held_out_images(runs):
    paths = [runs[0] / "last.pt", runs[1] / "last.pt"]
    members = [load_trained(p) for p in paths]
    check_members(paths, members, held_out=True)
    # Another data.val_seed holds out other images (with the fake data set's statistics taken from the rest, the
    # mean differs too, which `evaluate_checkpoint` refuses first): set here on the loaded config alone.
    members[1].config.data.val_seed = 1
    with pytest.raises(IncompatibleCheckpointError, match="held out different images"):
        check_members(paths, members, held_out=True)
    check_members(paths, members, held_out=False)  # the test split is everyone's
    with pytest.raises(ConfigError, match="no training config"):  # weights alone do not know their held-out split
        evaluate_checkpoint([runs[0] / "last.pt", runs[1] / "best.safetensors"], split="val", **KW)


def test_the_cli_scores_several_checkpoints_and_refuses_a_mismatch_in_one_line(runs, tmp_path, capsys):
    a, b = (str(out / "last.pt") for out in runs)
    assert main(["eval", "--checkpoint", a, b, "--json", "--precision", "fp32", "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["models"] == 2
    want = evaluate_checkpoint([a, b], **KW)
    assert result["acc1"] == pytest.approx(want.acc1, abs=1e-3) and result["loss"] == pytest.approx(want.loss, abs=1e-4)
    assert main(["eval", "--checkpoint", a, b, "--precision", "fp32", "--device", "cpu"]) == 0
    assert "(2 models, softmax averaged)" in capsys.readouterr().out.splitlines()[0]
    # One flag a model, as predict takes them, is the same ensemble (argparse's store kept only the last).
    assert main(["eval", "--weights", a, "--checkpoint", b, "--json", "--precision", "fp32", "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["models"] == 2
    meta = read_weights_meta(runs[1] / "best.safetensors")
    meta["classes"].reverse()
    save_weights(load_trained(runs[1] / "best.safetensors").model, tmp_path / "c.safetensors", meta)
    assert main(["eval", "--checkpoint", a, str(tmp_path / "c.safetensors"), "--precision", "fp32"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "classes" in err and "Traceback" not in err


def _images(tmp_path, n=3):
    from PIL import Image

    gen = torch.Generator().manual_seed(3)
    paths = []
    for i in range(n):
        pixels = torch.randint(0, 256, (40, 40, 3), generator=gen, dtype=torch.uint8).numpy()
        Image.fromarray(pixels).save(tmp_path / f"img{i}.png")
        paths.append(tmp_path / f"img{i}.png")
    return paths


def _probs(predictions):
    return torch.tensor([[p for _, p in sorted(pred.topk)] for pred in predictions])


def test_a_predictor_of_several_models_gives_their_softmax_averaged(runs, tmp_path):
    from alexnet.inference.predictor import Predictor

    a, b = runs[0] / "last.pt", runs[1] / "best.safetensors"
    images = _images(tmp_path)
    k = len(load_trained(a).classes)  # every class, so that the whole distribution is compared
    one, other = (_probs(Predictor.from_path(p).predict(images, topk=k)) for p in (a, b))
    assert not torch.allclose(one, other, atol=1e-3)  # two seeds, two models
    both = _probs(Predictor.from_path([a, b]).predict(images, topk=k))
    torch.testing.assert_close(both, (one + other) / 2, atol=1e-5, rtol=0)
    torch.testing.assert_close(_probs(Predictor.from_path([a]).predict(images, topk=k)), one)  # a list of one
    with pytest.raises(ConfigError, match="not ONNX"):
        Predictor.from_path([a, tmp_path / "model.onnx"])
    with pytest.raises(ConfigError, match="no model"):
        Predictor.from_path([])
    meta = read_weights_meta(b)
    meta["classes"].reverse()
    save_weights(load_trained(b).model, tmp_path / "c.safetensors", meta)
    with pytest.raises(IncompatibleCheckpointError, match="classes"):
        Predictor.from_path([a, tmp_path / "c.safetensors"])


def test_the_cli_predicts_with_several_models_one_weights_each(runs, tmp_path, capsys):
    """`--weights A --weights B`: a list after one --weights would swallow the images that follow it."""
    a, b = (str(out / "last.pt") for out in runs)
    images = [str(p) for p in _images(tmp_path, 2)]
    k = ["--topk", "10", "--json", "--device", "cpu", "--precision", "fp32"]
    assert main(["predict", "--weights", a, *images, *k]) == 0  # the one-model form, images after it, as before
    one = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert main(["predict", *images, "--weights", a, "--weights", b, *k]) == 0
    both = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["path"] for r in both] == images and len(one) == len(both) == 2
    assert both != one and abs(sum(t["prob"] for t in both[0]["topk"]) - 1) < 1e-4
    want = _probs(_predictor([a, b]).predict(images, topk=10))
    got = torch.tensor([[t["prob"] for t in sorted(r["topk"], key=lambda t: t["label"])] for r in both])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert main(["predict", images[0], "--weights", a, "--weights", str(tmp_path / "model.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not ONNX" in err and "Traceback" not in err


def _predictor(paths):
    from alexnet.inference.predictor import Predictor

    return Predictor.from_path(paths, device="cpu")
